"""Sub-commands of the ``jaxlm`` CLI; each module exposes ``main(argv) -> int``."""
