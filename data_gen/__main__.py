"""CLI: `python -m data_gen task=passkey n=1000 length=4096 seed=0 out=DIR [split=eval] [tokenizer=byte]
[overwrite=true] [any task parameter, e.g. digits=7 or params.digits=7]`.

Hydra-style `key=value` overrides (parsed by OmegaConf, so `depth=0.5`, `order=forward`, `x=null`
work). `python -m data_gen list` prints the tasks and their parameters. Writes a HF `datasets`
dataset and manifest.json (see data_gen/io.py); same arguments, same bytes.
"""

from __future__ import annotations

import sys

CLI_KEYS = {"task": None, "n": 100, "length": 4096, "seed": 0, "out": None, "split": "train", "tokenizer": "byte",
            "overwrite": False, "params": None}


def parse(argv: list[str]) -> tuple[dict, dict]:
    from omegaconf import OmegaConf

    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments must be key=value overrides, got {bad}; keys: {sorted(CLI_KEYS)} "
                         "plus task parameters (see `python -m data_gen list`)")
    try:
        cfg = OmegaConf.to_container(OmegaConf.from_dotlist([a.lstrip("+") for a in argv]), resolve=True)
    except Exception as e:  # noqa: BLE001 - OmegaConf grammar errors
        raise ValueError(f"cannot parse overrides {argv}: {e}") from e
    args = {k: cfg.pop(k, v) for k, v in CLI_KEYS.items()}
    params = dict(args.pop("params") or {})
    params.update(cfg)  # remaining top-level keys are task parameters
    return args, params


def main(argv: list[str] | None = None) -> int:
    import data_gen
    from data_gen import io

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["list"]:
        for name, spec in sorted(data_gen.TASKS.items()):
            print(f"{name:18s} {spec.description}\n{'':18s} params: {spec.defaults}")
        return 0
    args, params = parse(argv)
    # Every argument is checked before anything is created or generated.
    if args["task"] is None:
        raise ValueError(f"task= is required; allowed: {sorted(data_gen.TASKS)}")
    data_gen.get_task(args["task"])
    for key, lo in (("n", 1), ("length", 1), ("seed", 0)):
        if not isinstance(args[key], int) or isinstance(args[key], bool) or args[key] < lo:
            raise ValueError(f"{key}={args[key]!r} is not allowed; it must be an integer >= {lo}")
    if not isinstance(args["overwrite"], bool):
        raise ValueError(f"overwrite={args['overwrite']!r} is not allowed; allowed: true or false")
    if args["split"] not in data_gen.SPLITS:
        raise ValueError(f"split={args['split']!r} is not allowed; allowed: {list(data_gen.SPLITS)}")
    if not isinstance(args["tokenizer"], str) or not args["tokenizer"]:
        raise ValueError(f"tokenizer={args['tokenizer']!r} is not allowed; give `byte` or a tokenizer name/path")
    resolved = data_gen.resolve_params(args["task"], params)
    tokenizer = data_gen.resolve_tokenizer(args["tokenizer"])
    out = io.check_out_dir(args["out"], args["overwrite"])
    from tqdm import tqdm

    it = data_gen.iter_samples(args["task"], args["n"], args["length"], args["seed"], tokenizer, args["split"],
                               **params)
    samples = list(tqdm(it, total=args["n"], desc=f"{args['task']} L={args['length']}", unit="sample",
                        disable=None))
    manifest = {"task": args["task"], "params": resolved, "n_requested": args["n"], "length": args["length"],
                "seed": args["seed"], "split": args["split"], "tokenizer": args["tokenizer"]}
    path = io.write(samples, out, manifest, overwrite=args["overwrite"])
    print(f"wrote {len(samples)} samples to {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
