"""visprog: visual programming with vision modules, an interpreter and traces."""
from visprog.api import RunResult, VisProg
from visprog.errors import (CheckError, Diagnostic, EvalError, ImageError, ParseError,
                            ProgramError, StepError, VisProgError)
from visprog.language.parser import parse
from visprog.language.program import Program
from visprog.registry import Param, Registry, Tool, tool
from visprog.traces.records import StepRecord, Trace
from visprog.values import Objects, Region, load_image

__all__ = ["VisProg", "RunResult", "parse", "Program", "tool", "Tool", "Param", "Registry",
           "Trace", "StepRecord", "Objects", "Region", "load_image", "VisProgError",
           "ProgramError", "ParseError", "CheckError", "StepError", "EvalError", "ImageError",
           "Diagnostic"]
__version__ = "0.1.0"
