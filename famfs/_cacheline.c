/* famfs._cacheline: the processor's cache-line write-back and invalidate instructions, for
 * shared memory that is not cache-coherent between hosts (docs/consistency.md; upstream's
 * src/fcc-x86_64.c). CPython has no way to issue them; famfs/cacheflush.py is the only caller
 * and does every check of what may be flushed (device memory only, ranges in bounds).
 *
 * x86-64: write-back = CLWB (the line stays cached) or, without it, CLFLUSHOPT, or CLFLUSH;
 *         invalidate = CLFLUSHOPT or CLFLUSH (x86 has no user-mode invalidate without
 *         write-back); both chosen once by CPUID. SFENCE after a write-back orders it before
 *         the next store (data before entry, entry before header); MFENCE after an invalidate
 *         also orders it before the loads that follow.
 * arm64:  write-back = DC CVAC, invalidate = DC CIVAC (clean and invalidate: DC IVAC is not
 *         allowed at EL0), then DSB SY. The line size from CTR_EL0 (DminLine).
 * others: supported() is False and the range functions raise: famfs refuses coherence = "flush".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__x86_64__)
#include <cpuid.h>
#define ARCH "x86_64"
#elif defined(__aarch64__)
#define ARCH "aarch64"
#else
#define ARCH "unsupported"
#endif

/* Ranges from this size on let other threads run meanwhile (a 1 MiB range is ~16k lines); a
 * log header's few lines are done at once: giving up the GIL would cost more than they do. */
#define RELEASE_GIL_FROM (64 * 1024)

static size_t line_size;          /* 0: this CPU is not supported */
static const char *writeback_op = "none";
static const char *invalidate_op = "none";

#if defined(__x86_64__)
enum x86_op { OP_CLFLUSH, OP_CLFLUSHOPT, OP_CLWB };
static enum x86_op wb_kind, inv_kind;

static void line_op(enum x86_op kind, volatile char *p)
{
    switch (kind) {
    case OP_CLWB:
        __asm__ volatile("clwb %0" : "+m"(*p));
        break;
    case OP_CLFLUSHOPT:
        __asm__ volatile("clflushopt %0" : "+m"(*p));
        break;
    default:
        __asm__ volatile("clflush %0" : "+m"(*p));
    }
}

static void probe(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(d & (1u << 19)))
        return; /* no CLFLUSH: leave line_size 0 */
    line_size = ((b >> 8) & 0xff) * 8;
    if (line_size == 0)
        line_size = 64;
    int opt = 0, wb = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        opt = (b >> 23) & 1;
        wb = (b >> 24) & 1;
    }
    inv_kind = opt ? OP_CLFLUSHOPT : OP_CLFLUSH;
    wb_kind = wb ? OP_CLWB : inv_kind;
    invalidate_op = opt ? "clflushopt" : "clflush";
    writeback_op = wb ? "clwb" : invalidate_op;
}

static void do_range(int invalidate, char *start, char *end)
{
    enum x86_op kind = invalidate ? inv_kind : wb_kind;
    for (char *p = start; p < end; p += line_size)
        line_op(kind, p);
    if (invalidate)
        __asm__ volatile("mfence" ::: "memory");
    else
        __asm__ volatile("sfence" ::: "memory");
}

#elif defined(__aarch64__)
static void probe(void)
{
    uint64_t ctr;
    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    line_size = (size_t)4 << ((ctr >> 16) & 0xf);
    writeback_op = "dc cvac";
    invalidate_op = "dc civac";
}

static void do_range(int invalidate, char *start, char *end)
{
    if (invalidate)
        for (char *p = start; p < end; p += line_size)
            __asm__ volatile("dc civac, %0" : : "r"(p) : "memory");
    else
        for (char *p = start; p < end; p += line_size)
            __asm__ volatile("dc cvac, %0" : : "r"(p) : "memory");
    __asm__ volatile("dsb sy" ::: "memory");
}

#else
static void probe(void) {}
static void do_range(int invalidate, char *start, char *end) { (void)invalidate; (void)start; (void)end; }
#endif

/* range(buffer, offset, length): the lines of buffer[offset:offset+length]. The Python caller
 * has checked the buffer is device memory; the bounds are checked here too, as the memory is. */
static PyObject *range_op(PyObject *args, int invalidate)
{
    Py_buffer view;
    Py_ssize_t offset, length;
    if (line_size == 0) {
        PyErr_SetString(PyExc_OSError, "cache-line flush is not supported on this CPU (" ARCH ")");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*nn", &view, &offset, &length))
        return NULL;
    if (offset < 0 || length < 0 || offset > view.len || length > view.len - offset) {
        PyErr_Format(PyExc_ValueError, "range [%zd, %zd + %zd) is not within the buffer's %zd bytes",
                     offset, offset, length, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    if (length > 0) {
        uintptr_t first = ((uintptr_t)view.buf + (uintptr_t)offset) & ~(uintptr_t)(line_size - 1);
        char *end = (char *)view.buf + offset + length;
        if (length < RELEASE_GIL_FROM) {
            do_range(invalidate, (char *)first, end);
        } else {
            Py_BEGIN_ALLOW_THREADS
            do_range(invalidate, (char *)first, end);
            Py_END_ALLOW_THREADS
        }
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *cl_writeback(PyObject *self, PyObject *args) { (void)self; return range_op(args, 0); }
static PyObject *cl_invalidate(PyObject *self, PyObject *args) { (void)self; return range_op(args, 1); }

static PyObject *cl_info(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:s,s:n,s:s,s:s}", "arch", ARCH, "line_size", (Py_ssize_t)line_size,
                         "writeback", writeback_op, "invalidate", invalidate_op);
}

static PyMethodDef methods[] = {
    {"writeback", cl_writeback, METH_VARARGS,
     "writeback(buffer, offset, length): write the lines of the range back to memory, then fence."},
    {"invalidate", cl_invalidate, METH_VARARGS,
     "invalidate(buffer, offset, length): write back and drop the lines of the range, then fence."},
    {"info", cl_info, METH_NOARGS,
     "info() -> {arch, line_size (0: unsupported), writeback, invalidate}: what this CPU uses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "famfs._cacheline", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cacheline(void)
{
    probe();
    return PyModule_Create(&module);
}
