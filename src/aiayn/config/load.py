"""Reading a config: a preset, then its recipe, then a YAML file, then ``key=value`` overrides;
and rebuilding the config a checkpoint or run folder saved. Every path ends in ``validate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aiayn.config.bounds import validate
from aiayn.config.schema import SECTIONS, AiaynError, Config, section_fields
from aiayn.presets import PRESETS, RECIPES


def resolve_key(key: str) -> tuple[str, str]:
    """``d_model`` -> (``model``, ``d_model``); ``train.max_minutes`` passes through."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS or name not in section_fields(section):
            raise AiaynError(f"unknown config key '{key}' (sections: {', '.join(SECTIONS)})")
        return section, name
    owners = [s for s in SECTIONS if key in section_fields(s)]
    if not owners:
        raise AiaynError(f"unknown config key '{key}'; run `aiayn model-info tiny` to see every key")
    if len(owners) > 1:
        raise AiaynError(f"config key '{key}' is ambiguous: write {' or '.join(f'{s}.{key}' for s in owners)}")
    return owners[0], key


def _coerce(section: str, name: str, value: Any) -> Any:
    """Cast a YAML-parsed value to the field's declared type, or fail naming the key."""
    f = section_fields(section)[name]
    kind = str(f.type)
    key = f"{section}.{name}"
    if value is None:
        if "None" in kind:
            return None
        raise AiaynError(f"config key '{key}' cannot be empty")
    try:
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise AiaynError(f"config key '{key}' expects {kind}, got {value!r}") from None
    return value


def apply(cfg: Config, section: str, name: str, value: Any) -> None:
    setattr(getattr(cfg, section), name, _coerce(section, name, value))


def _apply_tree(cfg: Config, tree: dict[str, Any], origin: str) -> None:
    if "recipe" in tree:
        apply_recipe(cfg, tree["recipe"], origin)
    for section, values in tree.items():
        if section in ("preset", "recipe"):
            continue
        if section not in SECTIONS or not isinstance(values, dict):
            raise AiaynError(f"{origin}: unknown config section '{section}' (expected {', '.join(SECTIONS)})")
        for name, value in values.items():
            if name not in section_fields(section):
                raise AiaynError(f"{origin}: unknown config key '{section}.{name}'")
            apply(cfg, section, name, value)


# Every (section, key) some recipe sets: switching recipes resets each of them.
RECIPE_KEYS = tuple(dict.fromkeys((s, k) for r in RECIPES.values() for s, values in r.items() for k in values))


def _preset_value(preset_name: str, section: str, key: str) -> Any:
    """The value the preset itself gives a key, before any recipe: its own, else the dataclass default."""
    own = PRESETS.get(preset_name, {}).get(section, {})
    return own[key] if key in own else section_fields(section)[key].default


def apply_recipe(cfg: Config, name: Any, origin: str = "recipe") -> None:
    """Set every recipe key: the recipe's value where it names one, else the preset's."""
    if name not in RECIPES:
        raise AiaynError(f"{origin}: unknown recipe '{name}' (choose from {', '.join(RECIPES)})")
    cfg.recipe = name
    for section, key in RECIPE_KEYS:
        value = RECIPES[name].get(section, {}).get(key, _preset_value(cfg.preset, section, key))
        apply(cfg, section, key, value)


def preset(name: str) -> Config:
    """The preset's values, then its default recipe on top."""
    if name not in PRESETS:
        raise AiaynError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    cfg = Config(preset=name)
    tree = {k: v for k, v in PRESETS[name].items() if k != "recipe"}
    _apply_tree(cfg, tree, f"preset {name}")
    apply_recipe(cfg, PRESETS[name].get("recipe", "paper"), f"preset {name}")
    return cfg


def from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a config saved by ``Config.to_dict`` (checkpoints, run folders)."""
    cfg = Config(preset=tree.get("preset", "base"), recipe=tree.get("recipe", "paper"))
    _apply_tree(cfg, {k: v for k, v in tree.items() if k != "recipe"}, "saved config")
    return validate(cfg)


def apply_override(cfg: Config, item: str) -> None:
    """One ``key=value``; ``recipe=NAME`` applies a whole recipe."""
    key, _, raw = item.partition("=")
    if "=" in item and key.strip() == "recipe":
        apply_recipe(cfg, raw.strip())
    else:
        apply(cfg, *parse_override(item))


def parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise AiaynError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    section, name = resolve_key(key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return section, name, value


def load_config(
    preset_name: str | None = None, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Preset, then YAML file, then ``key=value`` overrides; validated at the end."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise AiaynError(f"{p}: config file not found") from None
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f":{line + 1}" if line is not None else ""
            raise AiaynError(f"{p}{where}: not valid YAML; fix the syntax") from None
        if not isinstance(tree, dict):
            raise AiaynError(f"{p}: expected a mapping of sections (model:, train:, ...)")
    cfg = preset(preset_name or tree.get("preset") or "base")
    if tree:
        _apply_tree(cfg, tree, str(path))
    for item in overrides:
        apply_override(cfg, item)
    return validate(cfg)
