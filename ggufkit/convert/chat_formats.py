"""Chat formats of the checkpoints that carry no chat template: FastChat's conversation templates.

Data only, keyed by FastChat's template names (fschat 0.2.36, ``fastchat.conversation``), with the
rules FastChat's model adapters use to pick one from a model's name. ``{bos}`` and ``{eos}`` in a
separator stand for the model's own BOS/EOS strings (FastChat writes ``<s>``/``</s>``, the
LLaMA/BLOOM ones). The Jinja rendering is in ``chat_templates``; the tests compare it with
FastChat's own ``get_prompt()`` for every name here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    """One FastChat conversation template, as the fields of its ``Conversation``.

    ``style`` is FastChat's separator style (lower case); ``examples`` are few-shot turns that
    precede every conversation; ``stop`` are strings that end a reply besides EOS.
    """

    name: str
    style: str  # add_colon_single | add_colon_two | phoenix | llama2
    roles: tuple[str, str]
    system_message: str = ""
    system_template: str = "{system_message}"
    sep: str = ""
    sep2: str = ""
    stop: tuple[str, ...] = ()
    examples: tuple[tuple[str, str], ...] = ()
    used_by: str = ""


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# FastChat's one_shot example exchange (Apache-2.0), verbatim: Vicuna v0 saw it in every prompt.
ONE_SHOT_EXAMPLE: tuple[tuple[str, str], ...] = (
    (
        "Human",
        "Got any creative ideas for a 10 year old’s birthday?",
    ),
    (
        "Assistant",
        (
            "Of course! Here are some creative ideas for a 10-year-old's birthday party:\n"
            "1. Treasure Hunt: Organize a treasure hunt in your backyard or nearby park. "
            "Create clues and riddles for the kids to solve, leading them to hidden "
            "treasures and surprises.\n"
            "2. Science Party: Plan a science-themed party where kids can engage in fun and "
            "interactive experiments. You can set up different stations with activities like "
            "making slime, erupting volcanoes, or creating simple chemical reactions.\n"
            "3. Outdoor Movie Night: Set up a backyard movie night with a projector and a "
            "large screen or white sheet. Create a cozy seating area with blankets and "
            "pillows, and serve popcorn and snacks while the kids enjoy a favorite movie "
            "under the stars.\n"
            "4. DIY Crafts Party: Arrange a craft party where kids can unleash their "
            "creativity. Provide a variety of craft supplies like beads, paints, and "
            "fabrics, and let them create their own unique masterpieces to take home as "
            "party favors.\n"
            "5. Sports Olympics: Host a mini Olympics event with various sports and games. "
            "Set up different stations for activities like sack races, relay races, "
            "basketball shooting, and obstacle courses. Give out medals or certificates to "
            "the participants.\n"
            "6. Cooking Party: Have a cooking-themed party where the kids can prepare their "
            "own mini pizzas, cupcakes, or cookies. Provide toppings, frosting, and "
            "decorating supplies, and let them get hands-on in the kitchen.\n"
            "7. Superhero Training Camp: Create a superhero-themed party where the kids can "
            "engage in fun training activities. Set up an obstacle course, have them design "
            "their own superhero capes or masks, and organize superhero-themed games and "
            "challenges.\n"
            "8. Outdoor Adventure: Plan an outdoor adventure party at a local park or nature "
            "reserve. Arrange activities like hiking, nature scavenger hunts, or a picnic "
            "with games. Encourage exploration and appreciation for the outdoors.\n"
            "Remember to tailor the activities to the birthday child's interests and "
            "preferences. Have a great celebration!"
        ),
    ),
)

FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in (
        ChatFormat(
            "vicuna_v1.1",
            "add_colon_two",
            ("USER", "ASSISTANT"),
            system_message=VICUNA_SYSTEM,
            sep=" ",
            sep2="{eos}",
            used_by="Vicuna v1.1 and later",
        ),
        ChatFormat(
            "one_shot",
            "add_colon_single",
            ("Human", "Assistant"),
            system_message=HUMAN_SYSTEM,
            sep="\n### ",
            stop=("###",),
            examples=ONE_SHOT_EXAMPLE,
            used_by="Vicuna v0",
        ),
        ChatFormat(
            "zero_shot",
            "add_colon_single",
            ("Human", "Assistant"),
            system_message=HUMAN_SYSTEM,
            sep="\n### ",
            stop=("###",),
            used_by="one_shot without the example exchange",
        ),
        ChatFormat(
            "phoenix",
            "phoenix",
            ("Human", "Assistant"),
            system_message=HUMAN_SYSTEM + "\n\n",
            used_by="Phoenix and Chimera (LLMZoo)",
        ),
        ChatFormat(
            "llama-2",
            "llama2",
            ("[INST]", "[/INST]"),
            system_template="[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
            sep=" ",
            sep2=" {eos}{bos}",
            used_by="LLaMA-2 chat",
        ),
    )
}

# Model name -> template, first match wins, as FastChat's adapters decide (VicunaAdapter picks
# one_shot when the name's last part has "v0"). Chimera uses Phoenix's format (LLMZoo).
NAME_RULES: tuple[tuple[str, str, str], ...] = (
    # (substring of the lower-cased name, extra substring of the last path part or "", template)
    ("vicuna", "v0", "one_shot"),
    ("vicuna", "", "vicuna_v1.1"),
    ("phoenix", "", "phoenix"),
    ("chimera", "", "phoenix"),
    ("llama-2", "", "llama-2"),
)
