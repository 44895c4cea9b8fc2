"""Click options generated from the run configs' field metadata, and the
``TRAINERS`` registry (algorithm name -> config class and train function).

Every option defaults to None ("not given"), so a config built from the
command line keeps the dataclass default for anything the user did not type;
the help text shows that default. A default and its help therefore exist once,
in the config beside each trainer.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable

import click


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _type(annotation: str, choices: tuple[str, ...]) -> Any:
    if choices:
        return click.Choice(list(choices))
    if "int" in annotation.split("|")[0]:
        return int
    if "float" in annotation:
        return float
    return str


def config_options(*classes: type, flags: dict[str, tuple[str, ...]] | None = None) -> Callable[[Any], Any]:
    """A decorator adding one option per CLI field of ``classes`` (first class
    wins on a shared name; ``flags`` overrides a field's spellings)."""
    seen: dict[str, Any] = {}
    for cls in classes:
        for f in fields(cls):
            if f.metadata.get("cli") and f.metadata.get("param", f.name) == f.name:
                seen.setdefault(f.name, f)
    opts = []
    for name, f in seen.items():
        meta, default, dash = f.metadata, _default(f), "--" + f.name.replace("_", "-")
        spellings = tuple((flags or {}).get(name, ()) or meta.get("flags") or ())
        shown = "" if default is None or isinstance(default, bool) or default == "" else f"  [default: {default}]"
        help_text = (meta.get("help") or "") + shown
        if "bool" in str(f.type):
            if spellings and "/" in spellings[0]:
                opts.append(click.option(spellings[0], name, default=None, help=help_text))
            elif default is True:
                opts.append(click.option(f"{dash}/--no-{dash[2:]}", name, default=None, help=help_text))
            else:
                opts.append(click.option(dash, *spellings, name, is_flag=True, default=None, help=help_text))
            continue
        decls = tuple(dict.fromkeys((*spellings, dash)))
        opts.append(click.option(*decls, name, type=_type(str(f.type), meta.get("choices") or ()),
                                 default=None, help=help_text))

    def decorate(fn: Any) -> Any:
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return decorate


def build_config(cls: type, given: dict[str, Any], **fixed: Any) -> Any:
    """``cls`` from command-line values: what was given (not None) over the defaults."""
    values = {}
    for f in fields(cls):
        key = f.metadata.get("param", f.name)
        if f.metadata.get("cli") and given.get(key) is not None:
            values[f.name] = given[key]
    return cls(**{**values, **fixed})


def ignored_options(cls: type, given: dict[str, Any], all_classes: tuple[type, ...]) -> list[str]:
    """Options given on the command line that ``cls`` has no field for."""
    own = {f.metadata.get("param", f.name) for f in fields(cls) if f.metadata.get("cli")}
    known = {f.name for c in all_classes for f in fields(c) if f.metadata.get("cli")}
    return sorted(k for k in known - own if given.get(k) not in (None, False))


@dataclass(frozen=True)
class Trainer:
    """One algorithm: its config class and its train function (``fn(ws, cfg, ...) -> TrainResult``)."""

    config: type
    train: Callable[..., Any]


def trainers() -> dict[str, Trainer]:
    """``TRAINERS``: algorithm name -> (config, train function). A new algorithm
    is one entry here plus its module (config beside trainer)."""
    from bakeoff.train.config import RewardRunConfig, SFTRunConfig
    from bakeoff.train.ppo import PPOConfig, train_ppo
    from bakeoff.train.reward import train_reward
    from bakeoff.train.rl import GroupRLConfig, train_group_rl
    from bakeoff.train.sft import train_sft

    return {"sft": Trainer(SFTRunConfig, train_sft), "reward": Trainer(RewardRunConfig, train_reward),
            "ppo": Trainer(PPOConfig, train_ppo), "grpo": Trainer(GroupRLConfig, train_group_rl),
            "rloo": Trainer(GroupRLConfig, train_group_rl)}


#: The algorithms ``bakeoff train rl --algorithm`` offers.
RL_ALGORITHMS = ("ppo", "grpo", "rloo")
