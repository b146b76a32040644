"""Object storage behind one small interface, with two real implementations.

`open_store(url)` returns a `Store` rooted at a prefix: `s3://bucket/prefix` (boto3; endpoint
and credentials from the standard AWS variables, e.g. AWS_ENDPOINT_URL_S3,
AWS_ACCESS_KEY_ID) or `file:///abs/path` / a plain path (the local filesystem, same layout).
Keys are relative to the prefix and use "/" separators.

CONTRACT (other modules code against exactly these signatures):

    class Store(abc.ABC):
        url: str                                   # the prefix URL, normalised
        def child(self, name: str) -> Store        # a Store rooted at <url>/<name>
        def put(self, key: str, data: bytes) -> None                 # overwrite allowed
        def put_if_absent(self, key: str, data: bytes) -> bool       # write-once (If-None-Match: *);
                                                                      # False if the key existed
        def open_writer(self, key: str) -> ContextManager[BinaryIO]  # streaming upload
                                                                      # (S3: multipart), visible on close
        def get(self, key: str) -> bytes                             # raises KeyNotFound
        def get_range(self, key: str, start: int, stop: int) -> bytes  # bytes [start, stop)
        def exists(self, key: str) -> bool
        def list(self, prefix: str = "") -> Iterator[str]           # keys below prefix, sorted
        def delete_prefix(self, prefix: str = "") -> int            # number of keys deleted

    class KeyNotFound(StoreError, KeyError)
    def open_store(url: str) -> Store
    def default_store_url() -> str   # $KUBEMAP_STORE, else file://<user cache dir>/kubemap/store

Every network failure becomes StoreError naming the endpoint and bucket and what to check.
"""
