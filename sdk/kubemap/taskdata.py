"""Reading and writing one task's files in a Store, in the layout of DESIGN.md.

CONTRACT (other modules code against exactly these signatures; `store` is the task's
own prefix, i.e. open_store(base).child(task_name)):

    def write_function(store: Store, fn: Callable[..., Any]) -> None
        # cloudpickle to fn.pkl; SerializationError (index=None) naming the function if it fails
    def read_function(store: Store) -> Callable[..., Any]
    def write_inputs(store: Store, items: Iterable[Any]) -> int
        # streams inputs.bin + inputs.idx (N+1 LE uint64 offsets); returns N;
        # SerializationError(index=i) naming the input that could not be pickled;
        # never holds every item as a separate Python object twice (1,000,000 small
        # inputs under 500 MB peak)
    def read_slice(store: Store, start: int, count: int, total: int | None = None) -> list[Any]
        # two ranged GETs: offsets from inputs.idx, then the bytes from inputs.bin;
        # CorruptTaskError if offsets are out of order / past the end
    def read_total(store: Store) -> int        # N, from task.json (or the size of inputs.idx)
    def write_meta(store: Store, meta: TaskMeta) -> None / read_meta(store) -> TaskMeta
    def write_results(store: Store, start: int, count: int, values: dict[int, Any]) -> bool
        # one write-once object results/<start>-<count> holding the indices of the slice
        # that succeeded (a subset of [start, start+count)); False if it already existed
    def iter_results(store: Store) -> Iterator[tuple[int, Any]]
        # every (index, value) recorded, first writer wins for an index seen twice
    def succeeded_indexes(store: Store) -> IndexRanges   # from result objects, no values loaded
    def write_error(store: Store, index: int, record: dict[str, Any]) -> None
        # errors/<index>.json: {"index", "type", "message", "traceback", "attempt"}
    def read_errors(store: Store) -> dict[int, RemoteError]
"""
