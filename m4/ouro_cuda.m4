# ouro_cuda.m4 - detection of the CUDA toolkit and of NCCL for ouroboros.
#
# OURO_CHECK_CUDA
#   --with-cuda[=DIR]      auto by default: CUDA is enabled when nvcc is found
#                          in DIR/bin (DIR defaults to /usr/local/cuda) or on
#                          PATH; --without-cuda forces a CPU-only build.
#   --with-cuda-arch=LIST  compute capabilities to build for (default "80 90").
#   Sets and substitutes NVCC, NVCCFLAGS, CUDA_HOME, CUDA_CPPFLAGS,
#   CUDA_LDFLAGS, CUDA_LIBS, CUDA_ARCH_LIST; defines HAVE_CUDA and
#   OURO_CUDA_ARCHS (e.g. "sm_80,sm_90"); AM_CONDITIONAL HAVE_CUDA.
#   Shell variable ouro_have_cuda is "yes" or "no" afterwards.
#
# OURO_CHECK_NCCL (after OURO_CHECK_CUDA)
#   --with-nccl[=DIR]      auto by default: enabled when CUDA is enabled and
#                          nccl.h is found in DIR/include, in CUDA's include
#                          directory or in the compiler's default path.
#   Sets and substitutes NCCL_CPPFLAGS, NCCL_LDFLAGS, NCCL_LIBS; defines
#   HAVE_NCCL; AM_CONDITIONAL HAVE_NCCL.
#   Shell variable ouro_have_nccl is "yes" or "no" afterwards.
#
# A feature that was asked for explicitly and cannot be provided stops
# configure with a message saying what to install; an auto-detected feature
# that is absent is simply left out.

#serial 1

# _OURO_CUDA_GIVE_UP(MESSAGE)
# Fail when CUDA was requested explicitly, otherwise disable it with a notice.
AC_DEFUN([_OURO_CUDA_GIVE_UP], [
  AS_IF([test "x$ouro_cuda_explicit" = xyes],
    [AC_MSG_ERROR([$1
Install the CUDA toolkit (nvcc, cudart, cuBLAS) from NVIDIA, e.g.
  apt-get install cuda-toolkit     (with NVIDIA's CUDA apt repository)
and pass --with-cuda=DIR pointing at it, or use --without-cuda for a
CPU-only build.])],
    [AC_MSG_NOTICE([$1; building without CUDA])
     ouro_have_cuda=no])
])

AC_DEFUN([OURO_CHECK_CUDA], [
AC_REQUIRE([AC_PROG_CC])
AC_ARG_WITH([cuda],
  [AS_HELP_STRING([--with-cuda@<:@=DIR@:>@],
    [build the CUDA backend; DIR is the CUDA toolkit root
     (default: auto, i.e. use /usr/local/cuda or nvcc on PATH when present)])],
  [], [with_cuda=check])
AC_ARG_WITH([cuda-arch],
  [AS_HELP_STRING([--with-cuda-arch=LIST],
    [compute capabilities to generate code for, separated by spaces or
     commas (default: "80 90", i.e. A100 and H100/H200)])],
  [ouro_cuda_arch_explicit=yes], [with_cuda_arch="80 90"; ouro_cuda_arch_explicit=no])
AC_ARG_VAR([NVCC], [CUDA compiler command])
AC_ARG_VAR([NVCCFLAGS], [extra flags for the CUDA compiler])

ouro_have_cuda=no
ouro_cuda_explicit=no
CUDA_HOME=
CUDA_CPPFLAGS=
CUDA_LDFLAGS=
CUDA_LIBS=
CUDA_ARCH_LIST=
ouro_nvcc_user_flags=$NVCCFLAGS
ouro_nvcc_arch_flags=

AS_CASE([$with_cuda],
  [no], [],
  [check], [],
  [yes], [ouro_cuda_explicit=yes],
  [ouro_cuda_explicit=yes; CUDA_HOME=$with_cuda])

AS_IF([test "x$with_cuda" != xno], [
  # 1. Locate nvcc and the toolkit root.
  AS_IF([test -n "$CUDA_HOME"], [
    AC_MSG_CHECKING([for nvcc in $CUDA_HOME/bin])
    AS_IF([test -x "$CUDA_HOME/bin/nvcc"],
      [NVCC="$CUDA_HOME/bin/nvcc"; AC_MSG_RESULT([$NVCC])],
      [AC_MSG_RESULT([no])
       AC_MSG_ERROR([--with-cuda=$CUDA_HOME was given but $CUDA_HOME/bin/nvcc does not exist.
Install the CUDA toolkit from NVIDIA, e.g.
  apt-get install cuda-toolkit     (with NVIDIA's CUDA apt repository)
and pass --with-cuda=DIR with DIR its root (the directory holding bin/nvcc),
or use --without-cuda for a CPU-only build.])])
  ], [test -n "$NVCC"], [
    AC_MSG_CHECKING([for nvcc])
    AC_MSG_RESULT([$NVCC (from the environment)])
  ], [
    AC_MSG_CHECKING([for nvcc in /usr/local/cuda/bin])
    AS_IF([test -x /usr/local/cuda/bin/nvcc],
      [NVCC=/usr/local/cuda/bin/nvcc; CUDA_HOME=/usr/local/cuda; AC_MSG_RESULT([yes])],
      [AC_MSG_RESULT([no])
       AC_PATH_PROG([NVCC], [nvcc], [])])
  ])

  AS_IF([test -z "$NVCC"],
    [_OURO_CUDA_GIVE_UP([nvcc was not found])],
    [ouro_have_cuda=yes])
])

AS_IF([test "x$ouro_have_cuda" = xyes], [
  AS_IF([test -z "$CUDA_HOME"], [
    # Derive the toolkit root from nvcc's location, following a symlink such
    # as /usr/bin/nvcc -> /usr/lib/nvidia-cuda-toolkit/bin/nvcc.
    ouro_nvcc_path=$NVCC
    AS_CASE([$ouro_nvcc_path], [*/*], [],
      [ouro_nvcc_path=`command -v "$ouro_nvcc_path" 2>/dev/null`])
    ouro_nvcc_real=$ouro_nvcc_path
    AS_IF([test -L "$ouro_nvcc_path"],
      [ouro_nvcc_real=`readlink -f "$ouro_nvcc_path" 2>/dev/null`
       test -n "$ouro_nvcc_real" || ouro_nvcc_real=$ouro_nvcc_path])
    CUDA_HOME=`AS_DIRNAME(["$ouro_nvcc_real"])`
    CUDA_HOME=`AS_DIRNAME(["$CUDA_HOME"])`
  ])
  AC_MSG_CHECKING([for the CUDA toolkit root])
  AC_MSG_RESULT([$CUDA_HOME])

  # 2. Architecture list -> -gencode flags. Real code (SASS) for every
  #    listed architecture, plus PTX for the newest one so that later GPUs
  #    can still JIT the kernels.
  AC_MSG_CHECKING([for CUDA architectures])
  ouro_arch_ok=yes
  ouro_arch_last=
  for ouro_arch in `echo "$with_cuda_arch" | tr ',' ' '`; do
    ouro_arch=`echo "$ouro_arch" | sed -e 's/^sm_//' -e 's/^compute_//'`
    AS_IF([echo "$ouro_arch" | grep -E '^@<:@1-9@:>@@<:@0-9@:>@{1,2}@<:@af@:>@?$' >/dev/null 2>&1],
      [], [ouro_arch_ok=no; break])
    ouro_nvcc_arch_flags="$ouro_nvcc_arch_flags -gencode arch=compute_$ouro_arch,code=sm_$ouro_arch"
    CUDA_ARCH_LIST="${CUDA_ARCH_LIST:+$CUDA_ARCH_LIST,}sm_$ouro_arch"
    ouro_arch_last=$ouro_arch
  done
  AS_IF([test "x$ouro_arch_ok" != xyes || test -z "$ouro_arch_last"],
    [AC_MSG_RESULT([invalid])
     AC_MSG_ERROR([--with-cuda-arch="$with_cuda_arch" is not a list of compute capabilities such as "80 90"])])
  ouro_nvcc_arch_flags="$ouro_nvcc_arch_flags -gencode arch=compute_$ouro_arch_last,code=compute_$ouro_arch_last"
  AC_MSG_RESULT([$CUDA_ARCH_LIST])
  NVCCFLAGS="-O3$ouro_nvcc_arch_flags${ouro_nvcc_user_flags:+ $ouro_nvcc_user_flags}"

  # 3. nvcc must compile a kernel for those architectures.
  AC_MSG_CHECKING([whether $NVCC compiles for $CUDA_ARCH_LIST])
  cat > conftest.cu <<_OURO_EOF
__global__ void ouro_conftest_kernel(float *p) { p@<:@threadIdx.x@:>@ = 1.0f; }
extern "C" int ouro_conftest(void) { return 0; }
_OURO_EOF
  AS_IF([$NVCC $NVCCFLAGS -c conftest.cu -o ouro_conftest_cu.$OBJEXT >&AS_MESSAGE_LOG_FD 2>&1],
    [AC_MSG_RESULT([yes])],
    [AC_MSG_RESULT([no])
     AS_IF([test "x$ouro_cuda_arch_explicit" = xyes],
       [AC_MSG_ERROR([$NVCC cannot compile for $CUDA_ARCH_LIST (see config.log).
Pass a --with-cuda-arch list this CUDA toolkit supports (see
"$NVCC --list-gpu-arch"), or a toolkit that supports these GPUs.])])
     _OURO_CUDA_GIVE_UP([$NVCC cannot compile for $CUDA_ARCH_LIST (see config.log)])])
  rm -f conftest.cu
])

AS_IF([test "x$ouro_have_cuda" = xyes], [
  # 4. The runtime and cuBLAS must link from C.
  CUDA_CPPFLAGS="-I$CUDA_HOME/include"
  ouro_cuda_libdir=
  for ouro_dir in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib" "$CUDA_HOME/targets/sbsa-linux/lib"; do
    AS_IF([test -f "$ouro_dir/libcudart.so" || test -f "$ouro_dir/libcudart.a"],
      [ouro_cuda_libdir=$ouro_dir; break])
  done
  AS_IF([test -n "$ouro_cuda_libdir"],
    [CUDA_LDFLAGS="-L$ouro_cuda_libdir -Wl,-rpath,$ouro_cuda_libdir"])
  # nvcc compiles host code as C++ (static-init guards, EH personality), so
  # programs linked by the C compiler also need the C++ runtime.
  CUDA_LIBS="-lcudart -lcublas -lcublasLt -lstdc++"

  ouro_save_CPPFLAGS=$CPPFLAGS
  ouro_save_LDFLAGS=$LDFLAGS
  ouro_save_LIBS=$LIBS
  CPPFLAGS="$CPPFLAGS $CUDA_CPPFLAGS"
  LDFLAGS="$LDFLAGS $CUDA_LDFLAGS"
  LIBS="$CUDA_LIBS $LIBS"
  LIBS="ouro_conftest_cu.$OBJEXT $LIBS"
  AC_MSG_CHECKING([whether C programs link with nvcc objects, the CUDA runtime and cuBLAS])
  AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <cuda_runtime.h>
#include <cublas_v2.h>
int ouro_conftest(void);
]], [[int n = 0; cublasHandle_t h;
(void)cudaGetDeviceCount(&n); (void)cublasCreate(&h); return ouro_conftest();]])],
    [AC_MSG_RESULT([yes])],
    [AC_MSG_RESULT([no])
     _OURO_CUDA_GIVE_UP([cuda_runtime.h/cublas_v2.h or -lcudart -lcublas -lcublasLt were not usable under $CUDA_HOME (see config.log)])])
  CPPFLAGS=$ouro_save_CPPFLAGS
  LDFLAGS=$ouro_save_LDFLAGS
  LIBS=$ouro_save_LIBS
])
rm -f ouro_conftest_cu.$OBJEXT

AS_IF([test "x$ouro_have_cuda" = xyes], [
  AC_DEFINE([HAVE_CUDA], [1], [Define to 1 to build the CUDA backend.])
  AC_DEFINE_UNQUOTED([OURO_CUDA_ARCHS], ["$CUDA_ARCH_LIST"],
    [Comma-separated list of the GPU architectures the kernels were built for.])
], [
  NVCC=
  NVCCFLAGS=$ouro_nvcc_user_flags
  CUDA_HOME=
  CUDA_CPPFLAGS=
  CUDA_LDFLAGS=
  CUDA_LIBS=
  CUDA_ARCH_LIST=
])
AC_SUBST([NVCC])
AC_SUBST([NVCCFLAGS])
AC_SUBST([CUDA_HOME])
AC_SUBST([CUDA_CPPFLAGS])
AC_SUBST([CUDA_LDFLAGS])
AC_SUBST([CUDA_LIBS])
AC_SUBST([CUDA_ARCH_LIST])
AM_CONDITIONAL([HAVE_CUDA], [test "x$ouro_have_cuda" = xyes])
])


# _OURO_NCCL_GIVE_UP(MESSAGE)
AC_DEFUN([_OURO_NCCL_GIVE_UP], [
  AS_IF([test "x$ouro_nccl_explicit" = xyes],
    [AC_MSG_ERROR([$1
Install NCCL from NVIDIA, e.g.
  apt-get install libnccl2 libnccl-dev     (with NVIDIA's CUDA apt repository)
and pass --with-nccl=DIR pointing at it, or use --without-nccl.])],
    [AC_MSG_NOTICE([$1; building without NCCL])
     ouro_have_nccl=no])
])

AC_DEFUN([OURO_CHECK_NCCL], [
AC_REQUIRE([OURO_CHECK_CUDA])
AC_ARG_WITH([nccl],
  [AS_HELP_STRING([--with-nccl@<:@=DIR@:>@],
    [use NCCL for GPU collectives; DIR is the NCCL install root
     (default: auto when CUDA is enabled)])],
  [], [with_nccl=check])

ouro_have_nccl=no
ouro_nccl_explicit=no
ouro_nccl_dir=
NCCL_CPPFLAGS=
NCCL_LDFLAGS=
NCCL_LIBS=
AS_CASE([$with_nccl],
  [no|check], [],
  [yes], [ouro_nccl_explicit=yes],
  [ouro_nccl_explicit=yes; ouro_nccl_dir=$with_nccl])

AS_IF([test "x$with_nccl" != xno], [
  AS_IF([test "x$ouro_have_cuda" != xyes], [
    AS_IF([test "x$ouro_nccl_explicit" = xyes],
      [AC_MSG_ERROR([--with-nccl needs the CUDA backend, which is not enabled.
Install the CUDA toolkit and NCCL from NVIDIA and pass --with-cuda@<:@=DIR@:>@,
or drop --with-nccl.])])
  ], [
    # Header: DIR/include, then CUDA's include directory, then the default
    # search path (e.g. /usr/include from the libnccl-dev package).
    AC_MSG_CHECKING([for nccl.h])
    ouro_nccl_inc=
    ouro_nccl_found=no
    # An explicit DIR is the only place looked at.
    AS_IF([test -n "$ouro_nccl_dir"],
      [ouro_nccl_search="$ouro_nccl_dir/include"],
      [ouro_nccl_search="$CUDA_HOME/include default"])
    for ouro_dir in $ouro_nccl_search; do
      AS_IF([test "x$ouro_dir" = xdefault],
        [ouro_save_CPPFLAGS=$CPPFLAGS
         CPPFLAGS="$CPPFLAGS $CUDA_CPPFLAGS"
         AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[#include <nccl.h>]], [[ncclComm_t c; (void)c;]])],
           [ouro_nccl_found=yes; ouro_nccl_inc=default])
         CPPFLAGS=$ouro_save_CPPFLAGS],
        [AS_IF([test -f "$ouro_dir/nccl.h"],
          [ouro_nccl_found=yes; ouro_nccl_inc=$ouro_dir])])
      test "x$ouro_nccl_found" = xyes && break
    done
    AS_IF([test "x$ouro_nccl_found" = xyes],
      [AC_MSG_RESULT([$ouro_nccl_inc])
       AS_IF([test "x$ouro_nccl_inc" != xdefault && test "x$ouro_nccl_inc" != "x$CUDA_HOME/include"],
         [NCCL_CPPFLAGS="-I$ouro_nccl_inc"])],
      [AC_MSG_RESULT([no])
       _OURO_NCCL_GIVE_UP([nccl.h was not found${ouro_nccl_dir:+ in $ouro_nccl_dir/include}])])

    AS_IF([test "x$ouro_nccl_found" = xyes], [
      AS_IF([test -n "$ouro_nccl_dir"], [
        for ouro_dir in "$ouro_nccl_dir/lib64" "$ouro_nccl_dir/lib" "$ouro_nccl_dir/lib/x86_64-linux-gnu"; do
          AS_IF([test -f "$ouro_dir/libnccl.so" || test -f "$ouro_dir/libnccl_static.a"],
            [NCCL_LDFLAGS="-L$ouro_dir -Wl,-rpath,$ouro_dir"; break])
        done
      ])
      NCCL_LIBS="-lnccl"
      ouro_save_CPPFLAGS=$CPPFLAGS
      ouro_save_LDFLAGS=$LDFLAGS
      ouro_save_LIBS=$LIBS
      CPPFLAGS="$CPPFLAGS $NCCL_CPPFLAGS $CUDA_CPPFLAGS"
      LDFLAGS="$LDFLAGS $NCCL_LDFLAGS $CUDA_LDFLAGS"
      LIBS="$NCCL_LIBS $CUDA_LIBS $LIBS"
      AC_MSG_CHECKING([whether C programs link with -lnccl])
      AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <nccl.h>]],
          [[int v = 0; (void)ncclGetVersion(&v);]])],
        [AC_MSG_RESULT([yes]); ouro_have_nccl=yes],
        [AC_MSG_RESULT([no])
         _OURO_NCCL_GIVE_UP([nccl.h was found but -lnccl does not link (see config.log)])])
      CPPFLAGS=$ouro_save_CPPFLAGS
      LDFLAGS=$ouro_save_LDFLAGS
      LIBS=$ouro_save_LIBS
    ])
  ])
])

AS_IF([test "x$ouro_have_nccl" = xyes],
  [AC_DEFINE([HAVE_NCCL], [1], [Define to 1 to use NCCL for GPU collectives.])],
  [NCCL_CPPFLAGS=; NCCL_LDFLAGS=; NCCL_LIBS=])
AC_SUBST([NCCL_CPPFLAGS])
AC_SUBST([NCCL_LDFLAGS])
AC_SUBST([NCCL_LIBS])
AM_CONDITIONAL([HAVE_NCCL], [test "x$ouro_have_nccl" = xyes])
])
