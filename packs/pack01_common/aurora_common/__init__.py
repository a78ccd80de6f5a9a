"""Aurora's shared primitives: one implementation of each, used by the installer and the packs.

Standard library only (the YAML half of ``structured`` needs PyYAML and imports it
lazily). The formats are written down once, with test vectors, in
``docs/primitives.md``; a module per primitive:

- ``digest``: the tree digest (``tree-v1:sha256:<hex>``)
- ``atomic``: atomic replace of a file
- ``journal``: durable append of one JSON-lines record
- ``lock``: the ``flock`` lock file
- ``identity``: process identity and pidfiles
- ``bounded``: bounded reads of regular files
- ``structured``: JSON and YAML reading with limits applied before parsing
"""

__version__ = "0.1.0"
