"""Tool calls during rollouts: the model calls a sandboxed Python interpreter mid-answer.

  config.py       ToolConfig (the call format, limits, shaping rewards), find_call, render_result
  python_tool.py  run_python_tool / run_python_tools: snippets in the code sandbox, output cut to a budget
  multiturn.py    sample_with_tools: B prompts -> B * G trajectories of model turns and tool outputs
"""

from grpo_jax.tools.config import ToolConfig, find_call, render_result
from grpo_jax.tools.multiturn import Trajectories, sample_with_tools
from grpo_jax.tools.python_tool import ToolResult, run_python_tool, run_python_tools

__all__ = ["ToolConfig", "find_call", "render_result", "ToolResult", "run_python_tool", "run_python_tools",
           "Trajectories", "sample_with_tools"]
