{
  "targets": [
    {
      "target_name": "peft_native",
      "sources": [
        "native/binding.cc",
        "native/threadpool.cc",
        "native/gemm/gemm.cc",
        "native/gemm/kernel_generic.cc",
        "native/gemm/kernel_avx2.cc",
        "native/gemm/kernel_avx512.cc",
        "native/gemm/kernel_avx512_bf16.cc",
        "native/gemm/kernel_amx.cc",
        "native/cpu_features.cc",
        "native/ops/norm.cc",
        "native/ops/rope.cc",
        "native/ops/attention.cc",
        "native/ops/attention_avx512.cc",
        "native/ops/activations.cc",
        "native/ops/elementwise.cc",
        "native/ops/loss_optim_embed.cc",
        "native/ops/rowops.cc",
        "native/ops/rowops_generic.cc",
        "native/ops/rowops_avx2.cc",
        "native/ops/rowops_avx512.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-psabi"],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3", "-fno-math-errno"]
      }
    }
  ]
}
