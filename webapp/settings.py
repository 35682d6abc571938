"""One `Settings` object for the whole app, composed from each package's own config
dataclass and loaded from `$ALTEREGO_HOME/config.toml` (optional) and `ALTEREGO_*`
environment variables (which win). The TOML has one table per section:

    [server]            [engine]              [memory]           [tuning]
    port = 7861         model = "gemma3-270m"    top_k = 6          max_steps = 100

and each key also reads from `ALTEREGO_<SECTION>_<KEY>`, e.g. `ALTEREGO_SERVER_PORT=7861`
or `ALTEREGO_ENGINE_MODEL=gemma3-270m`. Unknown sections, keys or variables are
errors that list the valid ones, so a typo never silently falls back to a default.
`ALTEREGO_HOME` itself is the single data root (default: the per-user data dir)."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from memory.config import MemoryConfig
from personas.config import EngineConfig, RouterConfig
from tuning.config import TuningConfig

from .errors import SettingsError

ENV_PREFIX = "ALTEREGO_"
# Variables that are not section keys: the data root, the model cache of `personas.models`
# (the Docker image sets it), and the install script's and the tests' own, which a shell
# may still export when the app starts.
RESERVED_ENV = {"ALTEREGO_HOME", "ALTEREGO_MODEL_CACHE", "ALTEREGO_WHEEL_CACHE", "ALTEREGO_WHEELS",
                "ALTEREGO_CA_BUNDLE", "ALTEREGO_TEST_ARTIFACTS"}


@dataclass
class ServerConfig:
    # Loopback by default: the app holds a person's private words. Any other address needs
    # `auth` (or `auth_file`), or the explicit `allow_unauthenticated` override.
    host: str = "127.0.0.1"
    port: int = 7860
    # Max conversations listed in the sidebar.
    conversation_list: int = 50
    # Login for the web UI: "user:password" pairs, comma-separated (a password may hold
    # ':' but not ','), or a file with one "user:password" per line (e.g. a Docker secret).
    auth: str = ""
    auth_file: str = ""
    # Serve a non-loopback address without a login anyway (e.g. inside a container whose
    # port is published on 127.0.0.1 only). Prints a warning at start.
    allow_unauthenticated: bool = False
    # Largest upload accepted by the Import tab, in MB (Gradio refuses bigger files).
    max_upload_mb: int = 2048


@dataclass
class Settings:
    home: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)

    # Paths under the data root; one place so nothing writes elsewhere.
    @property
    def journal_path(self) -> Path:
        return self.home / "journal.sqlite3"

    @property
    def chroma_path(self) -> Path:
        return self.home / "chroma"

    @property
    def adapters_path(self) -> Path:
        return self.home / "adapters"

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "engine": EngineConfig,
    "memory": MemoryConfig,
    "router": RouterConfig,
    "tuning": TuningConfig,
}


def default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("alterego", appauthor=False))


def resolve_home(env: typing.Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    raw = env.get("ALTEREGO_HOME", "").strip()
    return Path(raw).expanduser().resolve() if raw else default_home()


def valid_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _coerce(value: object, annotation: object, where: str) -> object:
    """Turn a TOML value or an env string into the field's declared type."""
    text = isinstance(value, str)
    try:
        if annotation in (int, "int"):
            if isinstance(value, bool):
                raise ValueError
            return int(value)  # type: ignore[arg-type]
        if annotation in (float, "float"):
            return float(value)  # type: ignore[arg-type]
        if annotation in (bool, "bool"):
            if isinstance(value, bool):
                return value
            if text and value.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if text and value.strip().lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if annotation in (str, "str"):
            if not text:
                raise ValueError
            return value
        if str(annotation).startswith("list"):
            if text:
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: {value!r} is not a valid {annotation}") from None
    raise SettingsError(f"{where}: unsupported setting type {annotation}")


def valid_env_names() -> list[str]:
    return ["ALTEREGO_HOME", "ALTEREGO_MODEL_CACHE"] + [ENV_PREFIX + k.replace(".", "_").upper() for k in valid_keys()]


def _apply(section: str, obj: object, key: str, value: object, where: str, from_env: bool = False) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    if key not in fields:
        valid = ", ".join(valid_env_names()) if from_env else ", ".join(valid_keys())
        raise SettingsError(f"{where}: unknown setting '{section}.{key}'. Valid: {valid}")
    setattr(obj, key, _coerce(value, fields[key].type, where))


def load_settings(env: typing.Mapping[str, str] | None = None, home: Path | None = None) -> Settings:
    """Build Settings: defaults, then config.toml, then ALTEREGO_* env vars."""
    env = os.environ if env is None else env
    settings = Settings(home=home or resolve_home(env))

    if settings.config_path.is_file():
        try:
            data = tomllib.loads(settings.config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{settings.config_path}: not valid TOML ({exc})") from None
        for section, table in data.items():
            if section not in SECTIONS or not isinstance(table, dict):
                raise SettingsError(
                    f"{settings.config_path}: unknown section [{section}]. "
                    f"Valid sections: {', '.join(SECTIONS)}"
                )
            for key, value in table.items():
                _apply(section, getattr(settings, section), key, value, str(settings.config_path))

    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS or not key:
            raise SettingsError(f"unknown environment variable {name}. Valid: {', '.join(valid_env_names())}")
        _apply(section, getattr(settings, section), key, value, f"environment variable {name}", from_env=True)
    settings.engine.validate()  # a backend typo fails at start, not on the first turn
    settings.memory.validate()
    return settings


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def save_setting(home: Path, section: str, key: str, value: object) -> Path:
    """Write one setting into `$ALTEREGO_HOME/config.toml`, keeping the others (comments
    are not kept: the file is rewritten). The value is checked like any loaded setting.
    Written to a temporary file and renamed, so a crash never leaves half a config."""
    if section not in SECTIONS:
        raise SettingsError(f"unknown section [{section}]. Valid sections: {', '.join(SECTIONS)}")
    probe = SECTIONS[section]()
    _apply(section, probe, key, value, "the new setting")
    path = Path(home) / "config.toml"
    data: dict = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path}: not valid TOML ({exc}); fix it before changing settings") from None
    data.setdefault(section, {})[key] = getattr(probe, key)
    lines = []
    for name, table in data.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
