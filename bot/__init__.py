"""kbot: a patch-series bisection and regression bot for Linux kernel mailing lists."""

__version__ = "0.1.0"
USER_AGENT = f"kbot/{__version__} (+patch-series regression bot; kvm nested-state selftests)"
