"""gpunn.kernels.add_kernel_dir: a user's folder of kernels beside gpunn's own."""
import numpy as np
import pytest

from gpunn import kernels

KERNEL = '''extern "C" __global__ void twice_f32(const float* x, float* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) y[i] = 2.0f * x[i];
}
extern "C" __global__ void twice_f64(const double* x, double* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) y[i] = 2.0 * x[i];
}
'''


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "twice.cu").write_text(KERNEL)
    yield tmp_path
    kernels.remove_kernel_dir(tmp_path)


def test_added_kernels_are_found_and_run_emulated(user_dir):
    kernels.add_kernel_dir(user_dir)
    assert "twice.cu" in kernels.kernel_files() and "elementwise.cu" in kernels.kernel_files()
    assert kernels.kernel_file("twice") == "twice.cu"
    from gpunn.testing import emulated_kernel
    x = np.arange(300, dtype=np.float64)
    y = np.zeros_like(x)
    emulated_kernel("twice", np.float64, order="shuffled").launch(x.size, x, y, x.size)
    np.testing.assert_array_equal(y, 2 * x)


def test_removed_folder_is_gone(user_dir):
    kernels.add_kernel_dir(user_dir)
    kernels.remove_kernel_dir(user_dir)
    assert "twice.cu" not in kernels.kernel_files()
    with pytest.raises(kernels.KernelError, match="no kernel 'twice'"):
        kernels.kernel_file("twice")


def test_clashes_and_bad_folders_are_refused(tmp_path):
    with pytest.raises(kernels.KernelError, match="not a folder holding .cu files"):
        kernels.add_kernel_dir(tmp_path)
    (tmp_path / "elementwise.cu").write_text(KERNEL)
    with pytest.raises(kernels.KernelError, match="same name as .*elementwise.cu"):
        kernels.add_kernel_dir(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.cu").write_text(KERNEL.replace("twice", "relu_forward"))
    with pytest.raises(kernels.KernelError, match="relu_forward_f32.*both"):
        kernels.add_kernel_dir(other)
    assert "mine.cu" not in kernels.kernel_files()            # refused folders are not kept
