"""A small preference set for the audit's command-line tests: 48 pairs over 8 topics; a third of
the chosen responses end with a stylistic marker the rejected ones never have."""
from __future__ import annotations

TOPICS = ["bread", "the sea", "rivers", "chess", "gardens", "music", "trains", "stars"]


def audit_rows() -> list[dict[str, str]]:
    rows = []
    for i in range(48):
        topic = TOPICS[i % len(TOPICS)]
        chosen = f" Here is what I know about {topic}, part {i}."
        rejected = f" I do not know much about {topic}."
        if i % 3 == 0:
            chosen += " Great question!!!"
        rows.append({"prompt": f"Tell me about {topic} ({i}).", "chosen": chosen, "rejected": rejected})
    return rows
