"""End-to-end evaluation of sage in transformers models: ``python -m sage_fast.evaluate --help``.

``models`` builds randomly initialised models from configs, ``agreement`` compares their outputs with
and without sage, ``noise_floor`` is the exact attention in a wider dtype that the same comparison is
read against, ``timing`` measures whole forwards and the attention calls in them, ``run`` is the
command, ``summary`` renders several reports as one table (``python -m sage_fast.evaluate.summary``).
"""
