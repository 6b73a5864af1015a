#!/usr/bin/env python3
"""Prints the code and data size of every ELF object inside a Rust .rlib (an ar archive), or the
flash and RAM of a linked firmware image.

Used by .ci/run to report rela-core's footprint on thumbv7em-none-eabihf (an upper bound: a
firmware image links only the functions it calls) and that of the firmware skeleton in
hosts/embassy/firmware.
"""
import struct
import sys


def elf_sections(blob):
    if blob[:4] != b"\x7fELF":
        return {}
    is64 = blob[4] == 2
    endian = "<" if blob[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", blob, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", blob, 0x3A)
    else:
        shoff, = struct.unpack_from(endian + "I", blob, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", blob, 0x2E)
    headers = []
    for i in range(shnum):
        off = shoff + i * shentsize
        if is64:
            name, typ, flags, _, _, size = struct.unpack_from(endian + "IIQQQQ", blob, off)
        else:
            name, typ, flags, _, _, size = struct.unpack_from(endian + "IIIIII", blob, off)
        headers.append((name, typ, flags, size, off))
    strtab_hdr = headers[shstrndx]
    str_off = struct.unpack_from(endian + ("Q" if is64 else "I"), blob, strtab_hdr[4] + (0x18 if is64 else 0x10))[0]
    out = {}
    for name, typ, flags, size, _ in headers:
        end = blob.index(b"\0", str_off + name)
        out.setdefault(blob[str_off + name:end].decode(), 0)
        out[blob[str_off + name:end].decode()] += size
    return out


def linked(path, data):
    """A linked firmware image: flash (vectors, code, read-only data, .data's initial values)
    and RAM (.data and .bss, without the stack)."""
    sections = elf_sections(data)
    flash = sum(n for name, n in sections.items() if name in (".vector_table", ".text", ".rodata", ".data"))
    ram = sum(n for name, n in sections.items() if name in (".data", ".bss", ".uninit"))
    print(f"{path.rsplit('/', 1)[-1]} (linked image): flash {flash} B, RAM {ram} B without the stack")


def main(path):
    data = open(path, "rb").read()
    if data[:4] == b"\x7fELF":
        return linked(path, data)
    assert data[:8] == b"!<arch>\n", "not an ar archive"
    pos, text, rodata, bss = 8, 0, 0, 0
    while pos + 60 <= len(data):
        size = int(data[pos + 48:pos + 58].decode().strip())
        member = data[pos + 60:pos + 60 + size]
        for name, n in elf_sections(member).items():
            if name.startswith(".text"):
                text += n
            elif name.startswith(".rodata"):
                rodata += n
            elif name.startswith(".bss") or name.startswith(".data"):
                bss += n
        pos += 60 + size + (size & 1)
    print(f"rela-core (thumbv7em-none-eabihf, release): text {text} B, rodata {rodata} B, data+bss {bss} B")


if __name__ == "__main__":
    main(sys.argv[1])
