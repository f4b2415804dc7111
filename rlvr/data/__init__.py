"""Which prompts the policy trains on: group filters (DAPO dynamic sampling, online
difficulty filtering), per-prompt pass-rate tracking, an adaptive curriculum over a task's
difficulty knob, and few-shot training pools."""
