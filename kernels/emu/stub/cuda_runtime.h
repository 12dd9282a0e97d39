/* Emulator stub: shadows the CUDA header of the same name for g++ (never on nvcc's include path). */
#include "../cuemu.h"
