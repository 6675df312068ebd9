-- How serving decided whether each completion was shown (core/wire.py ServingDecision, as JSON: its
-- rule, features, called, shown, propensity), for the show policy's fit (trainer/show_policy_fit.py).
-- Numbers only, no code: kept beyond retention like client and language. NULL for rows before this
-- step: not recorded.
ALTER TABLE completions ADD COLUMN decision text;
