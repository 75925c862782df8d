from megaspeech.config.load import ConfigError, build, check, load_config, to_dict  # noqa: F401
