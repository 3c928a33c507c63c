"""Custom socket types of the pack (names are part of saved workflows: never rename)."""
from comfy_api.latest import io

EZIGenEncoderType = io.Custom("EZIGEN_ENCODER")
EZIGenSubjectType = io.Custom("EZIGEN_SUBJECT")
