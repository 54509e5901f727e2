"""ToolConfig: how a completion calls the Python interpreter mid-answer, and what the call costs.

The call format is text the model writes, so any tokenizer can learn it (a character model as well as a BPE
chat model). A completion calls the tool by writing code after ``call_start`` and then ``call_end``:

    ```python
    print(4821 * 93017)
    ```
    ```output                     <- call_end: the sampler stops here (a stop sequence)
    448434957                     <- written by the tool: ``result_template`` with the output
    ```
    The product is 448434957.     <- the model continues

This is the tool-integrated reasoning format of ToRA and Qwen2.5-Math-TIR (the defaults); a recipe may use
any other pair of markers (the from-scratch recipe uses ``<py>`` ... ``</py>`` and ``<out>{output}</out>``).
The tool's text is appended as context: it is attended but never trained on, never counted as the model's
length, and never read by the rewards (grpo_jax.tools.multiturn).
"""

from __future__ import annotations

import dataclasses
import math

from grpo_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ToolConfig:
    """Tool calls during rollouts (training and eval); ``max_tool_calls = 0`` turns them off.

    max_tool_calls: calls a completion may make; a call beyond it is not run, ends the completion, and adds
      ``budget_reward``. The completion's whole length, the tool's text included, stays within
      sampling.max_new_tokens (the trajectory's token budget).
    call_start / call_end: the markers around a call's code; generation stops at ``call_end``. The code is the
      text between the last ``call_start`` before ``call_end`` and ``call_end``, without a closing code fence
      (a trailing "```"); a ``call_end`` without a ``call_start`` before it is a call with no code (an error).
    result_template: the text appended after ``call_end``; ``{output}`` is the tool's output (stdout, or the
      error's last traceback line), its trailing newlines removed.
    timeout_s / memory_mb: each call's wall-time limit (seconds) and address-space limit (MiB) in the sandbox.
    max_output_chars: the output is cut to this many characters (a marker says so) before it is tokenized.
    max_workers: calls run in parallel, this many at a time (each in its own sandboxed process).
    error_reward: added to a completion's reward for each of its calls that errored (e.g. -0.1; 0 = none).
    budget_reward: added to a completion's reward when it tried a call beyond max_tool_calls (0 = none).
    """

    max_tool_calls: int = 0
    call_start: str = "```python\n"
    call_end: str = "```output"
    result_template: str = "\n{output}\n```\n"
    timeout_s: float = 5.0
    memory_mb: int = 512
    max_output_chars: int = 256
    max_workers: int = 8
    error_reward: float = 0.0
    budget_reward: float = 0.0

    def __post_init__(self):
        def bad(field: str, expected: str):
            return ConfigError(f"tools.{field}={getattr(self, field)!r} is invalid: expected {expected}")

        for field in ("max_tool_calls", "memory_mb", "max_output_chars", "max_workers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if field == "max_tool_calls" else 1):
                raise bad(field, "an int >= 0" if field == "max_tool_calls" else "an int >= 1")
        for field in ("timeout_s", "error_reward", "budget_reward"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(field, "a finite number")
        if not self.timeout_s > 0:
            raise bad("timeout_s", "a finite number of seconds > 0")
        for field in ("call_start", "call_end"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise bad(field, "a non-empty string")
        if not isinstance(self.result_template, str) or "{output}" not in self.result_template:
            raise bad("result_template", "a string containing '{output}'")
        try:
            self.result_template.format(output="")
        except (IndexError, KeyError, ValueError) as e:
            raise bad("result_template", f"a str.format template whose only field is {{output}} ({e})") from None

    @property
    def enabled(self) -> bool:
        return self.max_tool_calls > 0


def find_call(text: str, tools: ToolConfig) -> tuple[str | None, int] | None:
    """The first tool call in one turn's text: (its code, the character offset just past ``call_end``), or
    None when the text makes no call. The code is None when no ``call_start`` comes before ``call_end``."""
    end = text.find(tools.call_end)
    if end < 0:
        return None
    start = text.rfind(tools.call_start, 0, end)
    if start < 0:
        return None, end + len(tools.call_end)
    code = text[start + len(tools.call_start):end]
    stripped = code.rstrip()
    if stripped.endswith("```"):  # the closing fence of a fenced block is markup, not code
        code = stripped[:-3]
    return code, end + len(tools.call_end)


def render_result(output: str, tools: ToolConfig) -> str:
    """The text the tool appends after a call: ``result_template`` around ``output``."""
    return tools.result_template.format(output=output.rstrip("\n"))
