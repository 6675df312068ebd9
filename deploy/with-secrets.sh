#!/bin/sh
# Runs a Flywheel command with its tokens and passwords read from files: compose's secrets in
# /run/secrets, or systemd's credentials in $CREDENTIALS_DIRECTORY (LoadCredential=). Neither the
# compose file nor a unit holds a secret, and none appears on a command line (`ps` shows those to
# every user). A secret whose file is absent is left unset.
set -eu
dir="${CREDENTIALS_DIRECTORY:-/run/secrets}"

export_secret() {  # export_secret VARIABLE FILE
    if [ -r "$dir/$2" ]; then
        value="$(cat "$dir/$2")"
        export "$1=$value"
    fi
}

export_secret FLYWHEEL_BACKEND__TOKEN admin_token
export_secret FLYWHEEL_BACKEND__METRICS_TOKEN metrics_token
export_secret FLYWHEEL_SERVING__VLLM_API_KEY vllm_api_key
export_secret VLLM_API_KEY vllm_api_key
export_secret PGPASSWORD postgres_password
exec "$@"
