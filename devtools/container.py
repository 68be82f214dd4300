"""Build trapline's container image on this machine, where no image registry is reachable.

``python3 -m devtools.container`` builds the base image once (a debootstrapped Debian 12
minbase, imported with ``podman import`` and kept in podman's image store), then the trapline
image from the working tree with deploy/container/Containerfile, and prints its name.

Podman here needs two settings that :data:`CONTAINERS_CONF` carries (see
/work/shared/reference/FACTS.md, "Containers"): runc, since crun refuses this machine's hybrid
cgroups, and no default ulimits, since setting RLIMIT_NOFILE/NPROC is refused.  Every podman
call of this module and of the tests goes through :func:`podman`, which applies them.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from devtools.localzabbix import CACHE_DIR, configured_debian_mirror

REPO: Final = Path(__file__).resolve().parent.parent
CONTAINERFILE: Final = REPO / "deploy/container/Containerfile"
BASE_IMAGE: Final = "localhost/trapline-base:bookworm"
IMAGE: Final = "localhost/trapline:dev"
CONTAINERS_CONF: Final = CACHE_DIR / "containers.conf"
_CONTAINERS_CONF_TEXT: Final = """\
# Written by devtools/container.py: the podman settings this machine needs.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
"""
# pip inside the build trusts what pip on the host trusts (a TLS-intercepting proxy's CA).
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
_CA_IN_BUILD: Final = "/run/trapline-host-ca.crt"


class ContainerError(RuntimeError):
    """A podman or debootstrap step failed; the message names the step and ends with its output."""


def podman_env() -> dict[str, str]:
    if not CONTAINERS_CONF.exists() or CONTAINERS_CONF.read_text() != _CONTAINERS_CONF_TEXT:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        CONTAINERS_CONF.write_text(_CONTAINERS_CONF_TEXT)
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(args: Sequence[str], *, check: bool = True, timeout: float | None = 120,
           stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with this machine's settings; ``check`` raises with its output."""
    binary = shutil.which("podman")
    if binary is None:
        raise ContainerError("podman is not installed (scripts/setup-debian.sh installs podman and runc)")
    done = subprocess.run([binary, *args], env=podman_env(), capture_output=True, timeout=timeout,
                          input=stdin, check=False)
    result = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                         done.stderr.decode(errors="replace"))
    if check and result.returncode:
        raise ContainerError(f"podman {' '.join(args[:2])} failed ({result.returncode}): "
                             f"{(result.stdout + result.stderr)[-2000:]}")
    return result


def image_exists(name: str) -> bool:
    return podman(["image", "exists", name], check=False).returncode == 0


def ensure_base_image() -> str:
    """The bookworm minbase image, imported once; later calls find it in podman's store."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "container-base.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs would debootstrap into one directory
        if image_exists(BASE_IMAGE):
            return BASE_IMAGE
        if shutil.which("debootstrap") is None:
            raise ContainerError("debootstrap is not installed (scripts/setup-debian.sh installs it)")
        rootfs = CACHE_DIR / "container-base.partial"
        shutil.rmtree(rootfs, ignore_errors=True)
        log = CACHE_DIR / "container-base.build.log"
        try:
            with log.open("wb") as out:
                mirror = configured_debian_mirror()
                argv = ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror]
                if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                    raise ContainerError(f"debootstrap of bookworm failed, see {log}")
            # apt's downloaded packages are of no use in the image.
            for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            tar = subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                                 capture_output=True, check=True).stdout
            podman(["import", "--change", "CMD=/bin/bash", "-", BASE_IMAGE], stdin=tar, timeout=600)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


def build_image(tag: str = IMAGE) -> str:
    """The trapline image from the working tree; podman's layer cache keeps rebuilds short."""
    base = ensure_base_image()
    args = ["build", "--format", "docker", "--file", str(CONTAINERFILE), "--tag", tag,
            "--build-arg", f"BASE={base}"]
    if HOST_CA_BUNDLE.exists():
        args += ["--volume", f"{HOST_CA_BUNDLE}:{_CA_IN_BUILD}:ro", "--build-arg", f"PIP_CERT={_CA_IN_BUILD}"]
    index = os.environ.get("PIP_INDEX_URL")
    if index:
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    # The checkout is the context: the Containerfile copies only the package's own folders.
    podman([*args, str(REPO)], timeout=1800)
    return tag


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m devtools.container", description=__doc__.split("\n")[0])
    parser.add_argument("--tag", default=IMAGE, help=f"image name (default {IMAGE})")
    args = parser.parse_args(argv)
    try:
        print(build_image(args.tag))
    except ContainerError as exc:
        print(f"devtools.container: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
