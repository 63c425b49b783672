"""The ``reptile-fn`` console script (and ``python -m reptile_fn``): ``reptile_fn.cli.main``, imported here so that
a Ctrl-C while the command line is still loading (typer, MLX: about a second) is one error line too, not a
traceback."""

import sys


def main() -> None:
    try:
        from reptile_fn.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("error: stopped by Ctrl-C (SIGINT) while starting; nothing was done\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
