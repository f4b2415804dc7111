"""Verification that cannot take the trainer down: scoring in worker processes with
timeouts, crash recovery and memory limits (``VerifierPool``), or in-process for tasks that
are trivially safe (``InlineVerifier``); ``make_verifier`` picks by the task's ``isolate``."""

from rlvr.verify.pool import InlineVerifier, VerifierPool, VerifierTimeoutError, is_timeout, make_verifier, score_inline

__all__ = ["InlineVerifier", "VerifierPool", "VerifierTimeoutError", "is_timeout", "make_verifier", "score_inline"]
