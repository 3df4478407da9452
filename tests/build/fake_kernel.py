"""A tiny fake kernel tree: the same make targets and layout kbot's builder drives, in seconds.

`make tinyconfig|olddefconfig|bzImage|headers_install` with O=, a merge_config.sh, a Kconfig list
(olddefconfig drops options it does not know, so a fragment can lose one), kbuild-style echo
lines, real gcc on real C files (so warnings and errors are the compiler's own, with
file:line:col), and a KVM selftests Makefile whose programs include an installed uapi header.
A test makes a file warn or fail by committing C code that does.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

MAKEFILE = r"""# fake kbuild for kbot's tests
O ?= .
srctree := $(CURDIR)
SRCS := $(shell cd $(srctree) && find arch kernel -name '*.c' | sort)
OBJS := $(patsubst %.c,$(O)/%.o,$(SRCS))

tinyconfig:
	@mkdir -p $(O)
	@printf 'CONFIG_64BIT=y\nCONFIG_CC_VERSION_TEXT="fake"\n' > $(O)/.config

olddefconfig:
	@awk 'NR==FNR{ok[$$1]=1;next} /^CONFIG_/{split($$0,a,"="); if(!(a[1] in ok)) next} {print}' \
		$(srctree)/Kconfig $(O)/.config > $(O)/.config.new && mv $(O)/.config.new $(O)/.config

bzImage: $(O)/arch/x86/boot/bzImage

# Relinked every time, as kbuild does when the object list changes (a commit that deletes a
# file must not leave its object in the image).
$(O)/arch/x86/boot/bzImage: $(OBJS) FORCE
	@mkdir -p $(dir $@)
	@echo "  LD      arch/x86/boot/bzImage"
	@cat $(OBJS) > $@

$(O)/%.o: %.c $(O)/.config
	@mkdir -p $(dir $@)
	@echo "  CC      $*.o"
	@$(CC) -Wall -c -o $@ $(srctree)/$<

headers_install:
	@mkdir -p $(INSTALL_HDR_PATH)/include/linux
	@cp include/uapi/linux/*.h $(INSTALL_HDR_PATH)/include/linux/

.PHONY: tinyconfig olddefconfig bzImage headers_install FORCE
FORCE:
"""

MERGE_CONFIG = r"""#!/bin/bash
# fake merge_config.sh: -m -O DIR BASE FRAGMENTS...
set -e
[ "$1" = -m ] && shift
[ "$1" = -O ] && { OUT=$2; shift 2; }
cat "$@" > "$OUT/.config.merged"
mv "$OUT/.config.merged" "$OUT/.config"
"""

SELFTESTS_MAKEFILE = r"""# fake KVM selftests
TEST_GEN_PROGS_x86_64 = x86_64/state_test
TEST_GEN_PROGS_x86_64 += x86_64/broken_test
OUTPUT ?= .
PROGS := $(patsubst %,$(OUTPUT)/%,$(TEST_GEN_PROGS_x86_64))
all: $(PROGS)
$(OUTPUT)/%: %.c
	@mkdir -p $(dir $@)
	$(CC) -Wall $(KHDR_INCLUDES) $(USERLDFLAGS) -o $@ $<
"""

FILES: dict[str, str] = {
    "Makefile": MAKEFILE,
    "Kconfig": "CONFIG_64BIT\nCONFIG_CC_VERSION_TEXT\nCONFIG_KVM\nCONFIG_KVM_INTEL\n",
    "scripts/kconfig/merge_config.sh": MERGE_CONFIG,
    "arch/x86/kvm/x86.c": "int kvm_x86_init(void)\n{\n\treturn 0;\n}\n",
    "arch/x86/kvm/vmx/nested.c": (
        "int nested_vmx_check(int state)\n{\n\tif (state)\n\t\treturn 1;\n\treturn 0;\n}\n"
    ),
    "kernel/fork.c": "int fork_me(void)\n{\n\treturn 2;\n}\n",
    "include/uapi/linux/kvm_fake.h": "#define KVM_FAKE_VERSION 1\n",
    "tools/testing/selftests/kvm/Makefile": SELFTESTS_MAKEFILE,
    "tools/testing/selftests/kvm/x86_64/state_test.c": (
        "#include <stdio.h>\n#include <linux/kvm_fake.h>\n"
        'int main(void)\n{\n\tprintf("version %d\\n", KVM_FAKE_VERSION);\n\treturn 0;\n}\n'
    ),
    # Like 6.1.192's dirty_log_test: in the Makefile, never builds.
    "tools/testing/selftests/kvm/x86_64/broken_test.c": "int main(void) { return undefined; }\n",
}
FRAGMENT = "CONFIG_KVM=y\nCONFIG_KVM_INTEL=y\nCONFIG_KVM_AMD=y\n"  # KVM_AMD: not in Kconfig


def git(repo: Path, *args: str, input: str | None = None) -> str:
    res = subprocess.run(  # noqa: S603 - test helper, argv list
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org",
         "-c", "commit.gpgsign=false", *args],
        cwd=repo, check=True, capture_output=True, text=True, input=input,
        env={"PATH": "/usr/bin:/bin", "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1",
             "GIT_AUTHOR_DATE": "1700000000 +0000", "GIT_COMMITTER_DATE": "1700000000 +0000"},
    )
    return res.stdout.strip()


def write_files(repo: Path, files: Mapping[str, str | None]) -> None:
    for rel, text in files.items():
        p = repo / rel
        if text is None:
            p.unlink()
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        if rel.endswith(".sh"):
            p.chmod(0o755)


def make_fake_kernel(repo: Path) -> str:
    """Create the fake tree as a git repo at `repo` (branch master); return the base sha."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "master")
    write_files(repo, FILES)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fake kernel base")
    return git(repo, "rev-parse", "HEAD")


def commit(repo: Path, files: Mapping[str, str | None], message: str) -> str:
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
