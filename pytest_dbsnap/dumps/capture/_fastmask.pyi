from collections.abc import Callable

EMAIL: int
PICK: int
FULL_NAME: int
PHONE: int
STREET: int
POSTAL_CODE: int
HASH: int
TEXT: int
JSON: int

class Native:
    def __init__(self, kind: int, secret: bytes, name: bytes, person: bytes, first: object, second: object) -> None: ...
    def column(
        self,
        rows: list[list[bytes]],
        index: int,
        first: int,
        memo: dict[bytes, bytes],
        slow: Callable[[bytes], bytes],
        longest: int,
    ) -> None: ...
    def one(self, field: bytes) -> bytes | None: ...
    def digest(self, value: bytes) -> bytes: ...

CONSTANT: int
ARRAY: int

def mask_chunk(data: bytes, fields: list[tuple[int, Native, Callable[[bytes], bytes]]]) -> bytes: ...
