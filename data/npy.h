// NumPy .npy files of 2-D float32 arrays (embedding matrices handed to Python).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace l2v {

// Writes data[rows * cols] (row-major) as the .npy v1.0 file numpy.save writes for a C-order float32
// array of shape (rows, cols): magic, version 1.0, the header dict
// {'descr': '<f4', 'fortran_order': False, 'shape': (rows, cols), } with numpy's spare spaces for the
// first axis, padded with spaces and a final '\n' so the data starts at a multiple of 64 bytes; then
// the little-endian floats. Atomic (data/atomic_file.h).
void write_npy_f32(const std::string& path, const float* data, size_t rows, size_t cols);

// Reads a .npy file holding a 2-D little-endian float32 array in C order (format version 1.0, 2.0 or
// 3.0, as numpy.save writes it); sets *rows and *cols. Throws std::runtime_error naming the file for
// anything else (other dtype or rank, Fortran order, a malformed header, a size that does not match).
std::vector<float> read_npy_f32(const std::string& path, size_t* rows, size_t* cols);

}  // namespace l2v
