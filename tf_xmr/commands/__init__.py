"""The command-line programs: ``python train.py`` / ``evaluate.py`` / ``tune.py`` and ``tf-xmr <command>`` run the
same ``main(argv, prog)`` of these modules (``tf_xmr.cli.main`` dispatches)."""
