"""The untrusted runner: the only code of the grader that imports students' code.

``python -P -m grading.runner REQUEST_FD REPLY_FD`` runs inside the sandbox
(:mod:`grading.sandbox`). It loads a student's notebook definitions and answers the trusted
grader's requests with data only (gradients, outputs, trained parameters); it decides nothing.
Everything in this process, this package included, is within the student's reach: the trusted
side validates every reply and computes every verdict itself.
"""
