"""``gpunn info`` and ``gpunn datasets``: what this machine has."""
from __future__ import annotations

import sys

import click
import numpy as np

from .. import __version__
from .app import echo_err, main


@main.command()
def info():
    """Show devices, library versions and the data sets found on this machine."""
    import matplotlib

    from ..backend import cuda_status
    from ..data import dataset_status

    ok, reason, count = cuda_status()
    from importlib.metadata import version
    click.echo(f"gpunn {__version__}  python {sys.version.split()[0]}  numpy {np.__version__}  "
               f"click {version('click')}  matplotlib {matplotlib.__version__}")
    try:
        import cupy
        click.echo(f"cupy {cupy.__version__}")
    except Exception:
        click.echo("cupy: not installed (pip install 'gpunn[cuda12]' or 'gpunn[cuda13]')")
    click.echo(f"CUDA: {'usable' if ok else 'not usable'} ({reason})")
    if ok:
        import cupy
        for i in range(count):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            click.echo(f"  cuda:{i}  {name}  {props['totalGlobalMem'] / 2**30:.1f} GiB")
    click.echo(f"default device ('auto'): {'cuda:0' if ok else 'cpu'}")
    from ..ops.mkl import describe
    click.echo(f"CPU GEMMs: {describe()}")
    from ..threads import malloc_setting
    click.echo(f"CPU memory: {malloc_setting()}")
    click.echo("data sets:")
    for name, where in dataset_status():
        click.echo(f"  {name:14s} {where}")


# -- datasets -----------------------------------------------------------------------------------
@main.command()
@click.option("--check", "check", metavar="NAME", help="Exit 0 if NAME is available, else print how to get it and exit 1.")
@click.option("--download", "download", metavar="NAME", help="Download NAME into the cache (checksums verified).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Look only in this folder.")
def datasets(check, download, data_dir):
    """List the known data sets and where each was found; check or download one."""
    from ..data import DatasetNotFound, dataset_status, download_dataset, locate_dataset

    if check:
        try:
            path = locate_dataset(check, data_dir=data_dir)
        except (DatasetNotFound, ValueError) as e:
            echo_err(str(e))
            sys.exit(1)
        click.echo(f"{check}: {path}")
        return
    if download:
        try:
            path = download_dataset(download, data_dir=data_dir)
        except Exception as e:
            echo_err(f"download of {download} failed: {e}")
            sys.exit(1)
        click.echo(f"{download}: {path}")
        return
    for name, where in dataset_status(data_dir=data_dir):
        click.echo(f"{name:14s} {where}")
