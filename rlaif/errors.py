"""Typed errors, in one place.

Every error a user can cause (a bad constitution, a broken template, an unknown labeler) is an
``RlaifError``. The CLI catches exactly this class, prints its message and exits with code 2, so
a traceback always means a bug in rlaif, never in the user's input. Errors about a file carry the
file and, where the format allows, the 1-based line, and render as ``path:line: message``.
"""

from __future__ import annotations

from pathlib import Path


class RlaifError(Exception):
    """Base class for every error caused by input, configuration or environment."""

    exit_code = 2


class FileError(RlaifError):
    """An error located in a file, optionally at a line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ProblemsError(FileError):
    """A file failed to parse or validate; ``problems`` holds every ``(line, message)`` found,
    so a user fixes a file in one pass."""

    def __init__(self, path: str | Path, problems: list[tuple[int | None, str]]):
        self.problems = problems
        first_line, first_msg = problems[0]
        super().__init__(path, first_msg, first_line)
        lines = [
            f"{self.path}:{ln}: {msg}" if ln else f"{self.path}: {msg}" for ln, msg in problems
        ]
        self.args = ("\n".join(lines),)

    def __str__(self) -> str:
        return self.args[0]


class ConstitutionError(ProblemsError):
    """A constitution (or its few-shot example file) failed to parse or validate."""


class ConfigFileError(ProblemsError):
    """A YAML config file (``--config``) failed to parse or validate."""


class ImportFormatError(FileError):
    """An input file for ``rlaif constitution import`` is not in the expected format."""


class PushError(FileError):
    """A dataset folder cannot be uploaded (no card, missing files, the Hub refused)."""


class TemplateError(FileError):
    """A prompt template failed to load or render (syntax, missing variable, bad output)."""


class TemplateSandboxError(TemplateError):
    """A template tried to reach Python internals; the sandbox refused."""


class PromptDataError(FileError):
    """A prompt data file (``--prompts``) is missing, empty or malformed."""


class PreferenceDataError(FileError):
    """Preference pairs (a trainer's ``dataset`` or a ``mix`` entry) are missing, empty or
    malformed; the message names the mix entry where there is one."""


class GoldDataError(PromptDataError):
    """A gold label file (``--gold``) is missing, empty or malformed."""


class ConfigError(RlaifError):
    """A setting is unknown or has a bad value (pydantic ``extra="forbid"`` lands here)."""


class LabelerNotFoundError(ConfigError):
    """No labeler backend or alias is registered under the requested name."""


class ModelNotFoundError(RlaifError):
    """A model name is not built in, not a local folder, and not a Hub id that can be fetched
    (offline and not cached, or no such repo or revision)."""


class TrainingDivergedError(RlaifError):
    """A training run produced a non-finite loss (or another watched metric): it stops at that
    step with this error instead of writing a model trained on NaNs. The last checkpoint, if any,
    is left in place so the run can resume with other settings."""

    def __init__(self, step: int, keys: list[str]):
        self.step = step
        self.keys = keys
        super().__init__(
            f"training diverged at step {step}: {', '.join(keys)} not finite "
            "(lower the learning rate, check the data, or train in fp32)"
        )


class BackendUnavailableError(RlaifError):
    """A backend's optional dependency is not installed."""


class ClusterError(RlaifError):
    """``--ray`` cannot be served: Ray is not installed, the cluster cannot be reached, or it
    lacks the resources the labeler actors ask for."""


class LabelerCallError(RlaifError):
    """A labeler request failed for good: not retryable, or still failing after the last retry.

    The engine marks the row failed with ``reason`` and goes on; a rerun retries such rows.
    ``permanent`` says the endpoint itself cannot serve any request (a rejected key, an unknown
    model or URL, nothing listening): the engine then stops the run instead (``EndpointError``).
    """

    def __init__(self, reason: str, attempts: int, retryable: bool, permanent: bool = False):
        self.reason = reason
        self.attempts = attempts
        self.retryable = retryable
        self.permanent = permanent
        super().__init__(f"{reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")


class EndpointError(RlaifError):
    """A run stopped because its labeler endpoint is unusable: a permanent failure (401/403,
    404, connection refused after its retries) or the last K rows all failed (the circuit
    breaker). Trying row after row would only spend time; rows already written stay in the
    journal, so the same command resumes once the endpoint is fixed. Exit code 4, distinct from
    3 (a run that finished with some rows failed)."""

    exit_code = 4


class FolderBusyError(RlaifError):
    """Another process is writing the output folder (it holds the folder's lock)."""


class StateFileError(FileError):
    """A state file rlaif keeps in an output folder (cache, journal manifest, batch ledger, run
    manifest) is damaged or not rlaif's. Never recreated over the user's data: the user moves it
    away; the rows already in the dataset are kept."""

    def __init__(self, path: str | Path, detail: str):
        super().__init__(
            path,
            f"damaged or not an rlaif state file ({detail}); move it away and run the same "
            "command again (the rows already in the dataset are kept)",
        )


class CacheError(RlaifError):
    """The labeler cache (SQLite) cannot be read or written: locked past its busy timeout, a full
    disk, a damaged file. The run stops with the file named; rows already written are kept."""


class EngineError(RlaifError):
    """The engine could not hand a labeler's answers to the rows that asked (a bug or an
    environment failure after the call). The run stops with the reason instead of waiting on
    rows that would never be answered."""


class LabelerResponseError(RlaifError):
    """A server answered with something that is not a valid response (garbage, truncated JSON)."""


class CompareError(RlaifError):
    """Two output folders cannot be compared: one holds no rlaif dataset (or a damaged one), they
    hold no dataset of the same kind, or their datasets share no row id."""


class ReviewError(RlaifError):
    """``rlaif review`` cannot serve or export: a bad option, an export that would overwrite a
    dataset file, a label store that is not rlaif's."""


class NoDatasetError(ReviewError):
    """A folder given to ``rlaif review`` holds no rlaif dataset (no SL-CAI, preference,
    red-team or policy-eval file in it or in its stage folders)."""


class BudgetExceededError(RlaifError):
    """A run stopped before spending past its ``max_cost``: the labelers billed ``spent`` (by
    their price tables), and the next request would have passed ``limit``. Nothing is lost: the
    rows written so far are in the journal, and answers that arrived are in the cache, so the same
    command with a higher limit resumes without paying for them again. Exit code 4, like a run
    stopped by its endpoint."""

    exit_code = 4

    def __init__(self, spent: float, limit: float, in_flight: int = 0, reserved: float = 0.0):
        self.spent = spent
        self.limit = limit
        waited = (
            f"; the {in_flight} request(s) in flight (up to ${reserved:.4f}) were let finish and "
            "their answers kept"
            if in_flight
            else ""
        )
        super().__init__(
            f"budget reached: spent ${spent:.4f} of the ${limit:.4f} limit (max_cost), and the "
            f"next request could pass it{waited}. Rows written so far are kept: run the same "
            "command with a higher --max-cost to finish (answers already received cost nothing "
            "again)"
        )
