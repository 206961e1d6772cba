"""One turn, in small parts, each with one reason to change.

- :mod:`.state`: the turn's state: typed calls (:class:`~.state.Call`), one record per call;
- :mod:`.routing`: the calls attachments and quoted passages get whatever the model decides;
- :mod:`.running`: running calls (repeats refused), results compacted for the model;
- :mod:`.loop`: the loop, with its seams: the prompt, asking the model, running its calls;
- :mod:`.prompt`: system prompt, token calibration, history fitting, the user's message;
- :mod:`.decision`: the structured tool decision of a model without native tool calling;
- :mod:`.parsing`: calls read out of a model's text, one reader per way of writing them;
- :mod:`.checks`: whether words are an answer to show, as named checks;
- :mod:`.stream`: the model's words passed on as they stream;
- :mod:`.fallback`: replies rendered from the tool results instead of the model's words;
- :mod:`.quirks`: workarounds for particular models, named as such.
"""
