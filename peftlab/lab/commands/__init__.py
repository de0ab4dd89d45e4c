"""The subcommands of ``peftlab`` (:mod:`peftlab.lab.cli`), one module each with a ``main(argv) -> int``; the
scripts under ``scripts/`` of the same names call them."""
