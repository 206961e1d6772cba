"""`assistant chat`: the terminal REPL.

On a terminal: a prompt with history (prompt_toolkit), replies streamed live and rendered
as Markdown (rich), a progress bar while a tool works on long media, Ctrl-C cancels the
reply in progress. With standard input not a terminal: one line in, plain text out
(errors and notices on standard error), so it can be scripted.

One concern per module:

- :mod:`.app` — `assistant chat`: the UI chosen, the agent started, the loop run;
- :mod:`.starter` — the agent built and its language model warmed up in a background thread
  (the first prompt never waits for langchain, torch or tensorflow to import);
- :mod:`.commands` — the command loop: messages become turns; /attach, /reset, /tools,
  /model, /voice, /help, /quit;
- :mod:`.paths` — a message that is only file paths sends those files;
- :mod:`.plain` — pipes and scripts: plain text or JSON (--json) out;
- :mod:`.terminal` — a terminal: prompt_toolkit input, rich live replies, completion, history.
"""

from adapters.repl.app import run
from adapters.repl.commands import Repl
from adapters.repl.plain import PlainUI
from adapters.repl.starter import AgentStarter, AgentUnavailable
from adapters.repl.terminal import LiveReply, RichUI

__all__ = ["AgentStarter", "AgentUnavailable", "LiveReply", "PlainUI", "Repl", "RichUI", "run"]
