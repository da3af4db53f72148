// LongBench v1's official metrics (THUDM/LongBench metrics.py + eval.py), written here from
// their definitions so that kvq's scores are comparable with published LongBench tables.
// Every function returns a score in [0, 1] for one prediction against one ground truth; a
// task's score is the mean over rows of the max over the row's ground truths, x 100,
// rounded to 2 decimals (score_task).
//
// Definitions (what the official code computes, including its quirks):
//   qa_f1           lower case, drop ASCII punctuation (Python's string.punctuation), replace
//                   the words a/an/the by a space, collapse whitespace; split on spaces;
//                   F1 of the multiset overlap of prediction and truth tokens (0 when none).
//   rouge_l         the `rouge` package's (pltrdy) "rouge-l" f: both texts are split into
//                   sentences at '.', words at spaces; summary-level union LCS over sets of
//                   words, r = |union LCS| / distinct reference words, p = ... / distinct
//                   prediction words, f = 2pr / (p + r + 1e-8). The package raises on an
//                   empty text, which LongBench turns into 0.
//   classification  (trec) classes of all_classes that occur as substrings of the
//                   prediction; a match that is a substring of the truth but not the truth
//                   is dropped, with Python's remove-while-iterating skip reproduced; score
//                   1/len(matches) when the truth is among them, else 0.
//   retrieval       (passage_retrieval_en) N from "Paragraph N" in the truth; fraction of
//                   the digit runs in the prediction equal to N (0 when there are none).
//   count           (passage_count) fraction of digit runs in the prediction equal to the
//                   truth string.
//   code_sim        (lcc, repobench-p) the first line of the prediction (leading newlines
//                   dropped) that contains none of '`', '#', "//" (empty when none) against
//                   the truth: fuzzywuzzy's fuzz.ratio with python-Levenshtein, i.e.
//                   round(100 * (1 - InDel distance / (len_a + len_b))) / 100, on code points.
// Non-goals: the Chinese metrics (qa_f1_zh, rouge_zh need the jieba segmenter):
// metric_for_task reports those tasks as unsupported.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvq::datasets {

enum class Metric { kQaF1, kRougeL, kClassification, kRetrieval, kCount, kCodeSim };

std::string_view metric_name(Metric m);  // "qa_f1", "rouge_l", ...

// The official task -> metric table (dataset2metric). UnsupportedError for the Chinese
// tasks, InvalidArgument for a name that is not a LongBench v1 task.
Metric metric_for_task(std::string_view task);

// LongBench's normalize_answer.
std::string normalize_answer(std::string_view s);

double qa_f1_score(std::string_view prediction, std::string_view truth);
double rouge_l_score(std::string_view prediction, std::string_view truth);
double classification_score(std::string_view prediction, std::string_view truth,
                            const std::vector<std::string>& all_classes);
double retrieval_score(std::string_view prediction, std::string_view truth);
double count_score(std::string_view prediction, std::string_view truth);
double code_sim_score(std::string_view prediction, std::string_view truth);

// Levenshtein InDel ratio 1 - d/(la+lb) on code points (1 for two empty strings), unrounded.
double indel_ratio(std::string_view a, std::string_view b);

double score_one(Metric m, std::string_view prediction, std::string_view truth,
                 const std::vector<std::string>& all_classes = {});

// eval.py's scorer for one row: for trec, triviaqa, samsum and lsht only the first line of
// the prediction counts; max over the ground truths (0 when there are none).
double score_row(std::string_view task, std::string_view prediction,
                 const std::vector<std::string>& answers,
                 const std::vector<std::string>& all_classes);

// round(100 * mean(row scores), 2); 0 for no rows.
double score_task(const std::vector<double>& row_scores);

}  // namespace kvq::datasets
