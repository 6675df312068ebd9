"""Flywheel's vLLM plugin (installed into the vLLM environment, not the project's).

- `temperature`: every model's logits divided by the serving temperature inside the model, so that
  vLLM's raw log-probs (`--logprobs-mode raw_logprobs`) are log_softmax(logits / T), the tempered
  distribution sampled from at request temperature 1.
- `healing`: the logits processor that holds a row's first tokens to those that spell its healed
  text (core/healing.py), applied after the raw log-probs are taken, so they stay unrestricted.
"""

# Set by Flywheel on the servers it starts (backend/vllm_server.py); without it the plugin does nothing.
TEMPERATURE_ENV = "FLYWHEEL_VLLM_TEMPERATURE"
# The per-request argument (`vllm_xargs`) that names the text a row's first tokens must spell.
HEALED_ARG = "flywheel_healed"
# The per-request argument naming the temperature the backend samples at: a server that tempers
# its logits otherwise refuses the request (a 400), rather than record other log-probs.
TEMPERATURE_ARG = "flywheel_temperature"
