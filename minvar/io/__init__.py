"""Files in and out: image datasets, minvar's run checkpoints, and the released official weights.

    data.py        the built-in shapes dataset, image folders, image grids
    checkpoint.py  minvar's self-describing run checkpoints (tokenizer, VAR, AR baseline); load_tokenizer, load_var
    official.py    the official state dicts: key layout, config inference, strict and safe loading
    pretrained.py  downloading and checking the released files (only when asked; nothing downloads at import)

Imports flow one way: the method (minvar/*.py) <- io <- evaluation <- training <- the scripts.
"""
