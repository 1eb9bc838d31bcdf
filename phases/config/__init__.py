"""The settings of a run: their schema, their checks, and how a config is composed from conf/.

    schema.py      dataclasses and Enums: every setting's type, default and comment (no Hydra)
    validation.py  ConfigError and the range and cross-reference checks, by schema type (no Hydra)
    options.py     where conf/ is, and one option file read on its schema (no Hydra)
    compose.py     registration with Hydra (the front doors call it) and compose(overrides)
    launcher.py    the local launcher's schema and resolvers
"""
