"""Built-in environments; importing this package registers them."""

from rlvr.rollout.envs import python_tool as _python_tool  # noqa: F401  (registers "python")
from rlvr.rollout.envs import try_again as _try_again  # noqa: F401  (registers "try_again")
