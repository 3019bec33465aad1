"""The training system around ``model/``: data sets (``data/``), the training runtime (``runtime/``),
shared helpers (``common/``) and one thin module per ``ppl-avvp`` command at this level."""
