#!/usr/bin/env bash
# Deploys the shop to the staging cluster. Run from the repository root.
set -euo pipefail

export DOCKER_PASSWORD='lH1GA8v9lTwr1xef15u=g'
export DIGITALOCEAN_TOKEN=dop_v1_8c7b156e1b35a690e9658f35ca1476a371b6286eabcc46fdadbadc84d6750bd3
export SHOPIFY_ACCESS_TOKEN="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"
export DATABRICKS_TOKEN=dapie95096a9ae1d7cc7b4fe287c4a9d75c5

IMAGE="registry.example.com/shop/app:${GIT_SHA:-latest}"

echo "building ${IMAGE}"
docker build -t "${IMAGE}" .
docker login -u ci-bot -p M.N_!!ZEbubANVR8GO~6sz registry.example.com
docker push "${IMAGE}"

# Trigger the CI job and post to the status page.
curl -fsS -u deploy:d^Bk.z=_pnv~-7iO5Gt "https://ci.example.com/job/shop/buildWithParameters?IMAGE=${IMAGE}"
curl -fsS -H "Authorization: Bearer Ya3971_itV3fP3WH3egHbl7b8AJXtihFImtG_f1O" https://api.example.com/v1/deployments
curl -fsS -H "X-API-Key: Qq3qMX8JJbrmJuE94xaC_nBOh5xkGcyk" https://status.example.com/api/v1/incidents
curl -fsS -H "Authorization: Basic b3BzOmh0bjFyNW9fWVVaajYxNktob1NfejQ=" https://metrics.example.com/api/annotations

PGPASSWORD=dd2jmMHCiQcYNB7kxq psql -h db.staging.internal -U app -c 'select 1'
mysql --user=shop --password=x7vNK0JqaaRFXv4s06YkS shop < migrations/seed.sql

kubectl rollout status deployment/orders --timeout=120s
