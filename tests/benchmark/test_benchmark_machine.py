"""What a benchmark records about its machine: the CPU's vector features parsed from /proc/cpuinfo text."""

import torch

from restransfer.benchmark.machine import cpu_info, machine_description, machine_info

# the first processor's entry as Linux prints it (flags shortened), then a second entry that must not be read
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
bogomips\t: 5399.99

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
ZEN3_AVX2 = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx f16c avx2 bmi2 sha_ni
"""
ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9B14
flags\t\t: avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp
"""


def test_cpu_features_from_cpuinfo_text():
    spr = cpu_info(SAPPHIRE_RAPIDS)
    assert spr["model_name"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert spr["features"] == {"avx2": True, "avx512": True, "avx512_bf16": True, "amx": True}
    assert spr["flags"] == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f"]
    assert cpu_info(ZEN3_AVX2)["features"] == {"avx2": True, "avx512": False, "avx512_bf16": False, "amx": False}
    zen4 = cpu_info(ZEN4)
    assert zen4["model_name"] == "AMD EPYC 9B14"
    assert zen4["features"] == {"avx2": True, "avx512": True, "avx512_bf16": True, "amx": False}
    # AMX counts only with both its tile and bf16 flags
    half_amx = ZEN4.replace("avx512_vnni", "amx_tile")
    assert cpu_info(half_amx)["features"]["amx"] is False
    arm = cpu_info(ARM)
    assert not any(arm["features"].values()) and arm["flags"] == []


def test_machine_record_names_what_results_depend_on():
    info = machine_info(torch.device("cpu"))
    assert info["threads"] == torch.get_num_threads() and info["torch"] == torch.__version__
    assert set(info["cpu"]["features"]) == {"avx2", "avx512", "avx512_bf16", "amx"}
    assert info["cpus_available"] >= 1 and info["gpu"] is None
    text = machine_description(torch.device("cpu"))
    assert info["cpu"]["model_name"] in text and torch.__version__ in text
