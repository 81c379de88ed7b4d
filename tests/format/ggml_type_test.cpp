#include "format/ggml_type.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace twinfer {
namespace {

TEST(GGMLType, BlockGeometryMatchesGgml) {
    struct Expected {
        GGMLType type;
        const char* name;
        size_t block_size, type_size;
        bool supported;
    };
    const Expected expected[] = {
        {GGMLType::F32, "F32", 1, 4, true},       {GGMLType::F16, "F16", 1, 2, true},
        {GGMLType::Q4_0, "Q4_0", 32, 18, true},   {GGMLType::Q4_1, "Q4_1", 32, 20, true},
        {GGMLType::Q5_0, "Q5_0", 32, 22, true},   {GGMLType::Q5_1, "Q5_1", 32, 24, true},
        {GGMLType::Q8_0, "Q8_0", 32, 34, true},   {GGMLType::Q8_1, "Q8_1", 32, 36, false},
        {GGMLType::Q2_K, "Q2_K", 256, 84, true},  {GGMLType::Q3_K, "Q3_K", 256, 110, true},
        {GGMLType::Q4_K, "Q4_K", 256, 144, true}, {GGMLType::Q5_K, "Q5_K", 256, 176, true},
        {GGMLType::Q6_K, "Q6_K", 256, 210, true}, {GGMLType::Q8_K, "Q8_K", 256, 292, false},
        {GGMLType::I8, "I8", 1, 1, false},        {GGMLType::I16, "I16", 1, 2, false},
        {GGMLType::I32, "I32", 1, 4, false},      {GGMLType::I64, "I64", 1, 8, false},
        {GGMLType::F64, "F64", 1, 8, false},      {GGMLType::BF16, "BF16", 1, 2, true},
        {GGMLType::MXFP4, "MXFP4", 32, 17, true},
    };
    for (const Expected& e : expected) {
        SCOPED_TRACE(e.name);
        const GGMLTypeTraits& traits = type_traits(e.type);
        EXPECT_EQ(traits.name, e.name);
        EXPECT_EQ(type_name(e.type), e.name);
        EXPECT_EQ(traits.block_size, e.block_size);
        EXPECT_EQ(traits.type_size, e.type_size);
        EXPECT_EQ(traits.supported, e.supported);
        EXPECT_TRUE(is_known_type(static_cast<uint32_t>(e.type)));
    }
}

TEST(GGMLType, UnknownIdsAreRejectedByNumber) {
    for (uint32_t id : {4u, 5u, 16u, 29u, 31u, 38u, 40u, 1000u}) {
        EXPECT_FALSE(is_known_type(id));
        try {
            type_traits(static_cast<GGMLType>(id));
            ADD_FAILURE() << "no exception for id " << id;
        } catch (const std::runtime_error& error) {
            EXPECT_NE(std::string(error.what()).find(std::to_string(id)), std::string::npos)
                << error.what();
        }
    }
}

TEST(GGMLType, RowSizeBytes) {
    EXPECT_EQ(row_size_bytes(GGMLType::F32, 7), 28u);
    EXPECT_EQ(row_size_bytes(GGMLType::BF16, 0), 0u);
    EXPECT_EQ(row_size_bytes(GGMLType::Q4_0, 64), 36u);
    EXPECT_EQ(row_size_bytes(GGMLType::Q6_K, 4096), 16u * 210u);
    EXPECT_EQ(row_size_bytes(GGMLType::MXFP4, 2880), 90u * 17u);
    EXPECT_THROW(row_size_bytes(GGMLType::MXFP4, 48), std::runtime_error);
    EXPECT_THROW(row_size_bytes(GGMLType::Q4_0, 33), std::runtime_error);
    EXPECT_THROW(row_size_bytes(GGMLType::Q4_K, 128), std::runtime_error);
    EXPECT_THROW(row_size_bytes(GGMLType::F64, std::numeric_limits<uint64_t>::max()),
                 std::runtime_error);
    EXPECT_THROW(row_size_bytes(GGMLType::F32, std::numeric_limits<uint64_t>::max() / 2),
                 std::runtime_error);
    EXPECT_THROW(row_size_bytes(static_cast<GGMLType>(99), 32), std::runtime_error);
}

}  // namespace
}  // namespace twinfer
