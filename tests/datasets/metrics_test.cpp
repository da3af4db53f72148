// LongBench metrics against values worked out by hand in the comments (no reference
// implementation is run here: each expected number follows from the definition in
// datasets/metrics.h).
#include <string>
#include <vector>

#include "datasets/metrics.h"
#include "formats/error.h"
#include "tests/catch.h"

using namespace kvq::datasets;
using kvq_test::Approx;

TEST_CASE("normalize_answer: lower, punctuation, articles, whitespace", "[metrics]") {
  // "An apple, a day:  THE end." -> lower/punct: "an apple a day  the end" -> articles
  // become spaces -> collapse: "apple day end".
  CHECK(normalize_answer("An apple, a day:  THE end.") == "apple day end");
  // Articles only as whole words: "theater", "anatomy", "Athens" keep theirs.
  CHECK(normalize_answer("theater anatomy Athens") == "theater anatomy athens");
  // Punctuation goes before articles: "a-b" -> "ab"; "the-end" -> "theend".
  CHECK(normalize_answer("a-b the-end") == "ab theend");
  CHECK(normalize_answer("  \t\n ") == "");
}

TEST_CASE("qa_f1: token overlap after normalization", "[metrics]") {
  // pred -> "eiffel tower in paris" (4 tokens), truth -> "eiffel tower" (2); overlap 2:
  // P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
  CHECK(qa_f1_score("The Eiffel Tower, in Paris!", "Eiffel tower") == Approx(2.0 / 3.0));
  // Multiset overlap: pred {paris x2, london}, truth {paris}: overlap min(2,1) = 1,
  // P = 1/3, R = 1, F1 = (2/3) / (4/3) = 0.5.
  CHECK(qa_f1_score("paris paris london", "Paris") == Approx(0.5));
  CHECK(qa_f1_score("The answer", "a answer.") == Approx(1.0));
  CHECK(qa_f1_score("berlin", "paris") == 0.0);
  CHECK(qa_f1_score("", "paris") == 0.0);
  CHECK(qa_f1_score("the", "a") == 0.0);  // both normalize to nothing
}

TEST_CASE("rouge_l: LCS F-measure, summary level over '.' sentences", "[metrics]") {
  // One sentence each. ref = the cat is on the mat, hyp = the cat sat on the mat.
  // LCS = the cat on the mat, as a set of words {the, cat, on, mat} = 4. Distinct words:
  // ref 5, hyp 5. r = p = 4/5, f = 2 * 0.64 / (1.6 + 1e-8) = 0.8 - 5e-9.
  CHECK(rouge_l_score("the cat sat on the mat", "the cat is on the mat") ==
        Approx(2 * 0.64 / (1.6 + 1e-8)).epsilon(1e-12));
  // Two sentences each: hyp [a b] [c d], ref [c d] [a x]. Union LCS over sentence pairs:
  // {c, d} from (cd, cd), {a} from (ax, ab) -> 3 words; ref and hyp have 4 distinct words
  // each: r = p = 3/4, f = 0.75 (a plain token LCS of the whole texts would give 0.5).
  CHECK(rouge_l_score("a b. c d", "c d. a x") == Approx(0.75).epsilon(1e-7));
  CHECK(rouge_l_score("identical words here", "identical words here") == Approx(1.0).epsilon(1e-7));
  // Case matters (the package does not lower-case).
  CHECK(rouge_l_score("Cat", "cat") == 0.0);
  // Empty texts: the package raises, LongBench scores 0.
  CHECK(rouge_l_score("", "cat") == 0.0);
  CHECK(rouge_l_score("cat", "  ") == 0.0);
  CHECK(rouge_l_score("...", "cat") == 0.0);
}

TEST_CASE("classification: trec rule, with the remove-while-iterating skip", "[metrics]") {
  const std::vector<std::string> classes = {"animal", "animal name", "color"};
  // matches [animal, animal name]; "animal" is inside the truth and not it: removed -> 1/1.
  CHECK(classification_score("animal name", "animal name", classes) == 1.0);
  // matches [animal, animal name, color] -> [animal name, color]: 1/2.
  CHECK(classification_score("color or animal name", "animal name", classes) == 0.5);
  CHECK(classification_score("color", "animal name", classes) == 0.0);
  CHECK(classification_score("nothing", "animal name", classes) == 0.0);
  // The quirk: matches [a1, a12, a123]; removing a1 (index 0) makes the loop skip a12, so
  // [a12, a123] remain and the score is 1/2, not 1.
  const std::vector<std::string> nested = {"a1", "a12", "a123"};
  CHECK(classification_score("a123", "a123", nested) == 0.5);
}

TEST_CASE("retrieval and count: fraction of numbers that match", "[metrics]") {
  CHECK(retrieval_score("Paragraph 12", "Paragraph 12") == 1.0);
  CHECK(retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 12") == 0.5);
  CHECK(retrieval_score("Paragraph 120", "Paragraph 12") == 0.0);
  CHECK(retrieval_score("no idea", "Paragraph 12") == 0.0);
  CHECK_THROWS_AS(retrieval_score("1", "twelve"), kvq::InvalidArgument);
  CHECK(count_score("There are 7 paragraphs, 7 unique", "7") == 1.0);
  CHECK(count_score("7 or 8", "7") == 0.5);
  CHECK(count_score("07", "7") == 0.0);  // string comparison, as in the original
  CHECK(count_score("seven", "7") == 0.0);
}

TEST_CASE("code_sim: first non-comment line, rounded InDel ratio", "[metrics]") {
  // Levenshtein.ratio("kitten", "sitting"): LCS "ittn" = 4, 2 * 4 / 13 = 0.615385.
  CHECK(indel_ratio("kitten", "sitting") == Approx(8.0 / 13.0));
  CHECK(indel_ratio("", "") == 1.0);
  // Code points, not bytes: "é" vs "e" share nothing, 2 code points in all -> 0.
  CHECK(indel_ratio("\xc3\xa9", "e") == 0.0);
  // Leading newlines dropped, "// add" skipped; "return a+b;" (11) is a subsequence of
  // "return a + b;" (13): 2 * 11 / 24 = 91.67% -> 92 -> 0.92.
  CHECK(code_sim_score("\n// add\nreturn a+b;\nmore", "return a + b;") == 0.92);
  // Every line is a comment: the prediction is "" -> 0.
  CHECK(code_sim_score("# only\n`x`", "return a + b;") == 0.0);
  // 2 * 1 / 16 = 12.5% exactly: Python rounds half to even -> 12 (half-up would give 13).
  CHECK(code_sim_score("a", "abcdefghijklmno") == 0.12);
}

TEST_CASE("score_row / score_task: task table, first line, max over answers", "[metrics]") {
  const std::vector<std::string> classes = {"Location", "Human being"};
  // trec scores only the first line (after leading newlines).
  CHECK(score_row("trec", "\nLocation\nHuman being", {"Location"}, classes) == 1.0);
  CHECK(score_row("trec", "\nHuman being\nLocation", {"Location"}, classes) == 0.0);
  // qasper: max over ground truths.
  CHECK(score_row("qasper", "yes", {"no", "yes"}, {}) == 1.0);
  CHECK(score_row("qasper", "yes", {}, {}) == 0.0);
  CHECK(metric_for_task("lcc") == Metric::kCodeSim);
  CHECK(metric_for_task("repobench-p") == Metric::kCodeSim);
  CHECK(metric_for_task("passage_count") == Metric::kCount);
  CHECK(metric_for_task("gov_report") == Metric::kRougeL);
  CHECK_THROWS_AS(metric_for_task("dureader"), kvq::UnsupportedError);
  CHECK_THROWS_AS(metric_for_task("wikitext"), kvq::InvalidArgument);
  // (1 + 0.5 + 0) / 3 = 50%; (1 + 1 + 0) / 3 = 66.666..% -> 66.67.
  CHECK(score_task({1.0, 0.5, 0.0}) == 50.0);
  CHECK(score_task({1.0, 1.0, 0.0}) == 66.67);
  CHECK(score_task({}) == 0.0);
}

TEST_CASE("score_row: first-line tasks, exact-match tasks and the task table by hand", "[metrics]") {
  // triviaqa (qa_f1) scores the first line after leading newlines: "Paris" vs "London" = 0,
  // although the second line is the answer; qasper (no first-line rule) reads it all:
  // "paris london" vs "london": P = 1/2, R = 1, F1 = 2/3.
  CHECK(score_row("triviaqa", "\n\nParis\nLondon", {"London"}, {}) == 0.0);
  CHECK(score_row("qasper", "\n\nParis\nLondon", {"London"}, {}) == kvq_test::Approx(2.0 / 3.0));
  // samsum (rouge_l) likewise: first line "a b" vs "a b" = 1; the whole text "a b\nc d"
  // is one sentence of 4 words with LCS 2 against "a b": r = 1, p = 1/2, f = 2/3 - tiny.
  CHECK(score_row("samsum", "a b\nc d", {"a b"}, {}) == kvq_test::Approx(1.0).epsilon(1e-7));
  CHECK(score_row("gov_report", "a b\nc d", {"a b"}, {}) == kvq_test::Approx(2.0 / 3.0).epsilon(1e-7));
  // passage_count / passage_retrieval_en are exact matches of whole numbers, max over answers.
  CHECK(score_row("passage_count", "There are 3 unique paragraphs.", {"3"}, {}) == 1.0);
  CHECK(score_row("passage_count", "3 or 4", {"4", "5"}, {}) == 0.5);
  CHECK(score_row("passage_retrieval_en", "Paragraph 2", {"Paragraph 2"}, {}) == 1.0);
  CHECK(score_row("passage_retrieval_en", "It is paragraph 12.", {"Paragraph 2"}, {}) == 0.0);
  CHECK(metric_for_task("triviaqa") == Metric::kQaF1);
  CHECK(metric_for_task("samsum") == Metric::kRougeL);
  CHECK(metric_for_task("passage_retrieval_en") == Metric::kRetrieval);
  CHECK_THROWS_AS(metric_for_task("lsht"), kvq::UnsupportedError);
}
