"""Progress bars draw on a terminal only: in a log file or a pipe each redraw would be one more line."""
import io

from lit_avatar.quiet import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_draws_on_a_terminal_and_writes_nothing_elsewhere():
    terminal, log = Terminal(), io.StringIO()
    for file in (terminal, log):
        with progress_bar(total=150, desc="generate", file=file, mininterval=0) as bar:
            for _ in range(150):
                bar.update(1)
    assert "generate" in terminal.getvalue() and "150/150" in terminal.getvalue()
    assert log.getvalue() == ""


def test_a_bar_switched_off_is_silent_on_a_terminal_and_wraps_its_iterable():
    terminal = Terminal()
    assert list(progress_bar(range(3), enabled=False, file=terminal)) == [0, 1, 2]
    assert terminal.getvalue() == ""
