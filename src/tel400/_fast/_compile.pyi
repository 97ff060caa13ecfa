from ..compiler import CompiledRule, Compiler
from ..plans import Rule

def compiled_rules(compiler: Compiler, number: str, rules: tuple[Rule, ...], prompts: dict[str, str],
                   rr_states: dict) -> tuple[CompiledRule, ...]: ...
