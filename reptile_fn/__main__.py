"""The ``reptile-fn`` console script (and ``python -m reptile_fn``): ``reptile_fn.cli.main``, imported here so that
a Ctrl-C while the command line is still loading (typer, MLX: about a second) is one error line too, not a
traceback."""

import sys


def main() -> None:
    from reptile_fn.signals import Terminated, sigterm_as_interrupt

    with sigterm_as_interrupt():  # a SIGTERM or SIGHUP while loading is one line too, as a Ctrl-C
        try:
            from reptile_fn.cli import main as cli_main
        except KeyboardInterrupt as e:
            name = e.name if isinstance(e, Terminated) else "Ctrl-C (SIGINT)"
            sys.stderr.write(f"error: stopped by {name} while starting; nothing was done\n")
            raise SystemExit(e.status if isinstance(e, Terminated) else 130) from None
        cli_main()


if __name__ == "__main__":
    main()
