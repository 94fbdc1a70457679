"""Supervised fine-tuning on conversations: the data side lives in :mod:`jaxlm.data.chat` (so the run
pipeline can build it) and is re-exported here; the ``sft`` task (:mod:`jaxlm.train.tasks`) is the causal LM
loss over those arrays, whose weights are 1 on assistant tokens only."""

from jaxlm.data.chat import (  # noqa: F401  # noqa: F401
    ROLES,
    ChatDataError,
    apply_chat_template,
    build,
    check_conversation,
    encode,
    load_template,
    messages_column,
    pack,
    render,
    template_kwargs,
)
