"""The registry with every built-in reward family registered: import lookups from here.

`registry` only holds the table; the families (`correctness`, `format`, `length`) register into it
when imported. Looking a name up through this module guarantees they are loaded, without the
package `__init__` importing everything (which made `tasks` and `rewards` import each other).
"""

from __future__ import annotations

from grpo_box.rewards import correctness, format, length  # noqa: F401  (registers the built-in rewards)
from grpo_box.rewards.registry import RewardError, RewardInfo, get_reward, list_rewards, register, reward_info

__all__ = ["RewardError", "RewardInfo", "get_reward", "list_rewards", "register", "reward_info"]
